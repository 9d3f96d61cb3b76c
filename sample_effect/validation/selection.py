"""Selection check: does fine-tuning on the top-k by sample effect beat random k-subsets?

Fine-tune the same weights on the top-k, the bottom-k and several random k-subsets of a ranked
pool, with one recipe, and compare the held-out target loss and accuracy at the end. The random
subsets give the reference distribution: its mean with a t-interval, and where the top-k run
falls in it. The comparison only discriminates before training saturates (every selection then
reaches the same floor), so the budget is a parameter of the recipe, not fixed here.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from sample_effect.data.examples import TokenizedExample
from sample_effect.errors import SampleEffectError

AGGREGATES = ("mean", "max", "round-robin")


def top_k_indices(scores: np.ndarray, k: int, how: str = "mean", largest: bool = True) -> np.ndarray:
    """The k pool examples a score matrix picks ([n] or [n, T], one column per target example).

    `mean`: the k largest mean scores over the target examples (what ranking toward the mean target
    does). `max`: the k largest best-column scores (LESS's aggregation, Xia et al. 2024). `round-robin`:
    the target examples take turns, each adding its highest-scoring example not yet taken, so every
    target example gets data aimed at it. `largest=False` picks from the other end (bottom-k).
    """
    s = np.asarray(scores, dtype=np.float64)
    s = (s if s.ndim == 2 else s[:, None]) * (1.0 if largest else -1.0)
    n = s.shape[0]
    if not 1 <= k <= n:
        raise SampleEffectError(f"k must be between 1 and the pool size {n}, got {k}")
    if how in ("mean", "max"):
        agg = s.mean(1) if how == "mean" else s.max(1)
        return np.argsort(-agg, kind="stable")[:k]
    if how != "round-robin":
        raise SampleEffectError(f"unknown aggregate '{how}'; choose {', '.join(AGGREGATES)}")
    orders = [np.argsort(-s[:, j], kind="stable") for j in range(s.shape[1])]
    taken: list[int] = []
    seen: set[int] = set()
    pos = [0] * s.shape[1]
    while len(taken) < k:
        for j, order in enumerate(orders):
            while pos[j] < n and int(order[pos[j]]) in seen:
                pos[j] += 1
            if pos[j] < n and len(taken) < k:
                taken.append(int(order[pos[j]]))
                seen.add(taken[-1])
    return np.asarray(taken)


def selection_sets(table: pd.DataFrame, k: int, n_random: int, seed: int = 0) -> dict[str, list[str]]:
    """top-k, `n_random` seeded random k-subsets and bottom-k ids of a ranked table (rank 1 first)."""
    ids = list(table["id"])
    if not 1 <= k <= len(ids):
        raise SampleEffectError(f"k must be between 1 and the pool size {len(ids)}, got {k}")
    rng = random.Random(seed)
    out = {f"top-{k}": ids[:k]}
    for s in range(n_random):
        out[f"random-{k} (seed {s})"] = rng.sample(ids, k)
    out[f"bottom-{k}"] = ids[-k:]
    return out


def selection_runs(
    load: Callable[[], tuple[Any, Any]], tok: Any, pool: Sequence[TokenizedExample], selections: dict[str, list[str]],
    cfg: Any, target: Sequence[TokenizedExample], prompts: Sequence[tuple[str, str]] | None, reward: Any,
    progress: bool = True, say: Callable[[str], None] | None = None,
) -> dict[str, pd.DataFrame]:
    """Fine-tune a fresh model (`load()`) on each selection with the SFT recipe `cfg`; metrics per run."""
    from sample_effect.training import train_sft

    index = {ex.id: i for i, ex in enumerate(pool)}
    runs = {}
    for label, chosen in selections.items():
        fresh, _ = load()
        torch.manual_seed(cfg.seed)
        runs[label] = train_sft(fresh, tok, [pool[index[i]] for i in chosen], cfg, eval_examples=target,
                                eval_prompts=prompts, reward=reward, progress=progress)
        if say is not None:
            last = runs[label].iloc[-1]
            acc = f", accuracy {last['eval_accuracy']:.3f}" if "eval_accuracy" in last else ""
            say(f"{label}: target loss {last['eval_loss']:.3f}{acc}")
    return runs


def selection_summary(runs: dict[str, pd.DataFrame], selections: dict[str, list[str]], table: pd.DataFrame) -> pd.DataFrame:
    """One row per run: start/end target loss (and accuracy), the group it belongs to and its mean effect."""
    eff = table.set_index("id")["effect"]
    rows = []
    for label, df in runs.items():
        row = {"selection": label, "group": label.split("-")[0], "mean_effect": float(eff.loc[selections[label]].mean()),
               "target_loss_start": float(df["eval_loss"].iloc[0]), "target_loss_end": float(df["eval_loss"].iloc[-1])}
        if "eval_accuracy" in df:
            row["accuracy_start"] = float(df["eval_accuracy"].iloc[0])
            row["accuracy_end"] = float(df["eval_accuracy"].iloc[-1])
        rows.append(row)
    return pd.DataFrame(rows)


def _t95(n: int) -> float:
    from scipy.stats import t

    return float(t.ppf(0.975, n - 1)) if n > 1 else float("nan")


def _verdict_clause(m: dict[str, Any], n_random: int, what: str) -> str:
    """One metric's part of the verdict: beyond the random prediction interval, better than every draw, or neither."""
    lo, hi = m["random_prediction_interval95"]
    if m["top_beyond_prediction_interval"]:
        return (f"top-k beats random on {what}: {m['top']:.4g} lies outside the random runs' 95% prediction "
                f"interval [{lo:.4g}, {hi:.4g}]")
    if m["top_better_than_every_random"]:
        return (f"top-k is better than each of the {n_random} random runs on {what} ({m['top']:.4g} vs mean "
                f"{m['random_mean']:.4g}) but inside their 95% prediction interval: suggestive, not decisive")
    return f"top-k does not beat random on {what} ({m['top']:.4g} vs random mean {m['random_mean']:.4g} +- {m['random_sd']:.2g} sd)"


def selection_verdict(summary: pd.DataFrame) -> dict[str, Any]:
    """Top-k and bottom-k against the random runs, per metric: the random mean with its 95% t-interval
    (of the mean) and 95% prediction interval (of one more random run), where top-k falls, and a one-line
    verdict (target loss first, then test accuracy)."""
    rnd = summary[summary["group"] == "random"]
    if len(rnd) < 2:
        raise SampleEffectError("the selection verdict needs at least 2 random runs")
    out: dict[str, Any] = {"n_random": len(rnd)}
    for metric, better in (("target_loss_end", -1.0), ("accuracy_end", 1.0)):
        if metric not in summary:
            continue
        vals = rnd[metric].to_numpy(dtype=float)
        mean, sd, n = float(vals.mean()), float(vals.std(ddof=1)), len(vals)
        t = _t95(n)
        top = float(summary.loc[summary["group"] == "top", metric].iloc[0])
        bottom = float(summary.loc[summary["group"] == "bottom", metric].iloc[0])
        half_pred = t * sd * math.sqrt(1 + 1 / n)
        out[metric] = {
            "random_mean": mean, "random_sd": sd,
            "random_mean_ci95": [mean - t * sd / math.sqrt(n), mean + t * sd / math.sqrt(n)],
            "random_prediction_interval95": [mean - half_pred, mean + half_pred],
            "top": top, "bottom": bottom,
            "top_better_than_every_random": bool(np.all(better * (top - vals) > 0)),
            "top_beyond_prediction_interval": bool(better * (top - mean) > half_pred) if sd > 0 else bool(better * (top - mean) > 0),
            "top_z": float(better * (top - mean) / sd) if sd > 0 else None,
        }
    clauses = [_verdict_clause(out[m], len(rnd), what) for m, what in
               (("target_loss_end", "target loss"), ("accuracy_end", "test accuracy")) if m in out]
    if clauses:
        out["verdict"] = "; ".join(clauses)
    return out
