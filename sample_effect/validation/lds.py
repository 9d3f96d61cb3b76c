"""The linear datamodeling score (LDS): do summed effects predict what training on a subset actually does?

Park et al. (2023, TRAK) score an attribution method by retraining on M random subsets S_m of the
pool (each a fraction `fraction` of it, R seeds each) and correlating, across subsets, the
method's predicted target value with the one reached. Here, per target example j:

    predicted drop_mj = sum_{i in S_m} e_ij      (e_ij: example i's effect toward target example j)
    actual drop_mj    = loss_j(base) - mean over seeds of loss_j(after training on S_m)

`lds` is the mean over target examples of the Spearman correlation across subsets, and
`lds_mean_target` the Spearman correlation for the mean target (the mean over j of both sides).
Both come with percentile bootstrap intervals over subsets. Rank correlations do not care about
the scale of the effects (so an effect per unit lr and a drop in nats compare directly).

`retrain_subsets` trains the real SFT trainer on every subset and caches each (subset, seed) under
CACHE/retrain-KEY-mM-rR.json, so adding a method or a subset never retrains what exists.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sample_effect.data.examples import TokenizedExample
from sample_effect.engine.core import example_loss_values
from sample_effect.errors import SampleEffectError
from sample_effect.io import atomic_open
from sample_effect.training.sft import SFTConfig, train_sft
from sample_effect.validation.stability import spearman

Loader = Callable[[], tuple[torch.nn.Module, Any]]


@dataclass
class LDSConfig:
    """M random subsets of `fraction` of the pool, `runs` trainer seeds each, bootstrap draws, the subsets' seed."""

    subsets: int = 32
    fraction: float = 0.5
    runs: int = 1
    n_boot: int = 1000
    seed: int = 0

    def validate(self) -> LDSConfig:
        """Raise SampleEffectError on an out-of-range setting; return self."""
        if self.subsets < 3:
            raise SampleEffectError(f"subsets must be >= 3 (a rank correlation across subsets), got {self.subsets}")
        if not 0 < self.fraction < 1:
            raise SampleEffectError(f"fraction must be in (0, 1), got {self.fraction}")
        if self.runs < 1 or self.n_boot < 100:
            raise SampleEffectError(f"runs must be >= 1 and n_boot >= 100, got {self.runs} and {self.n_boot}")
        return self


def draw_subsets(n: int, cfg: LDSConfig) -> list[np.ndarray]:
    """M sorted index sets of round(fraction * n) examples (at least 1), drawn without replacement, seeded."""
    k = max(1, round(cfg.fraction * n))
    if k >= n:
        raise SampleEffectError(f"a subset of {k} of {n} examples is the whole pool; lower the fraction")
    rng = np.random.default_rng(cfg.seed)
    return [np.sort(rng.choice(n, size=k, replace=False)) for _ in range(cfg.subsets)]


# SFTConfig fields that change no trained weight and came after the retrain cache's format: left out of its key
_UNKEYED = ("eval_steps",)


def _key(pool: Sequence[TokenizedExample], target: Sequence[TokenizedExample], sft: SFTConfig, base: str) -> str:
    config = {k: v for k, v in asdict(sft).items() if k not in _UNKEYED}
    blob = json.dumps({"pool": [e.id for e in pool], "target": [e.id for e in target], "sft": config, "base": base},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def prediction_key(pool: Sequence[TokenizedExample], target: Sequence[TokenizedExample], sft: SFTConfig, base: str,
                   subsets: Sequence[np.ndarray]) -> str:
    """The key of a method's cached effects or predictions: the retrains' key and the subsets."""
    blob = _key(pool, target, sft, base) + json.dumps([[int(i) for i in s] for s in subsets])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def target_losses(model: torch.nn.Module, target: Sequence[TokenizedExample]) -> np.ndarray:
    """Per-example loss of the target examples (no grad)."""
    with torch.no_grad():
        return example_loss_values(model, target).cpu().numpy().astype(np.float64)


def retrain_subsets(
    load: Loader,
    base: str,
    pool: Sequence[TokenizedExample],
    target: Sequence[TokenizedExample],
    sft: SFTConfig,
    subsets: Sequence[np.ndarray],
    runs: int,
    cache_dir: str | os.PathLike,
    say: Callable[[str], None] | None = None,
) -> np.ndarray:
    """[M, runs, T] target losses after training on each subset with each seed (sft.seed + r); cached per retrain."""
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    key = _key(pool, target, sft, base)
    out = np.empty((len(subsets), runs, len(target)))
    for m, idx in enumerate(subsets):
        for r in range(runs):
            f = cache / f"retrain-{key}-m{m}-r{r}.json"
            if f.exists():
                rec = json.loads(f.read_text())
                if rec["subset"] != [int(i) for i in idx]:
                    raise SampleEffectError(f"{f} was made for another subset; use another cache directory")
                out[m, r] = rec["losses"]
                continue
            t0 = time.perf_counter()
            model, tok = load()
            torch.manual_seed(sft.seed + r)
            train_sft(model, tok, [pool[i] for i in idx], replace(sft, seed=sft.seed + r), progress=False)
            out[m, r] = target_losses(model, target)
            with atomic_open(f) as fh:
                json.dump({"subset": [int(i) for i in idx], "seed": sft.seed + r, "losses": out[m, r].tolist(),
                           "seconds": time.perf_counter() - t0}, fh)
            if say:
                say(f"retrained subset {m + 1}/{len(subsets)} seed {r}: mean target loss {out[m, r].mean():.4f}")
    return out


def retrain_seconds(cache_dir: str | os.PathLike) -> tuple[float, int]:
    """The seconds the cached retrains took (summed over those that recorded it) and how many recorded it."""
    times = [json.loads(f.read_text()).get("seconds") for f in Path(cache_dir).glob("retrain-*.json")]
    times = [t for t in times if t is not None]
    return float(sum(times)), len(times)


def summed_effects(effects: np.ndarray, subsets: Sequence[np.ndarray]) -> np.ndarray:
    """[M, T] predicted drops: the sum over each subset of the [n, T] per-example, per-target effects."""
    e = np.asarray(effects, dtype=np.float64)
    if e.ndim == 1:
        e = e[:, None]
    return np.stack([e[idx].sum(0) for idx in subsets])


def _bootstrap(fn: Callable[[np.ndarray], float], m: int, n_boot: int, seed: int) -> list[float]:
    rng = np.random.default_rng(seed)
    vals = np.array([fn(rng.integers(0, m, m)) for _ in range(n_boot)])
    vals = vals[np.isfinite(vals)]
    return [float(np.percentile(vals, 2.5)), float(np.percentile(vals, 97.5))] if len(vals) else [float("nan")] * 2


def lds_scores(predicted: np.ndarray, actual: np.ndarray, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """LDS of one method: `predicted` and `actual` drops, [M, T] (per target example) or [M] (mean target only)."""
    p, a = np.asarray(predicted, dtype=float), np.asarray(actual, dtype=float)
    if p.ndim == 1:
        p = p[:, None]
    if a.ndim == 1:
        a = a[:, None]
    m = a.shape[0]
    if p.shape[0] != m:
        raise SampleEffectError(f"{p.shape[0]} predicted subsets against {m} actual ones")
    per_target = p.shape[1] == a.shape[1] and p.shape[1] > 1

    def lds(rows: np.ndarray) -> float:
        rhos = [spearman(p[rows, j], a[rows, j]) for j in range(a.shape[1])]
        rhos = [x for x in rhos if np.isfinite(x)]
        return float(np.mean(rhos)) if rhos else float("nan")

    def mean_target(rows: np.ndarray) -> float:
        return spearman(p[rows].mean(1), a[rows].mean(1))

    everything = np.arange(m)
    out: dict[str, Any] = {
        "lds": lds(everything) if per_target else None,
        "lds_ci95": _bootstrap(lds, m, n_boot, seed) if per_target else None,
        "lds_mean_target": mean_target(everything),
        "lds_mean_target_ci95": _bootstrap(mean_target, m, n_boot, seed + 1),
    }
    return out


def lds_table(predictions: Mapping[str, np.ndarray], actual: np.ndarray, n_boot: int = 1000) -> dict[str, dict[str, Any]]:
    """`lds_scores` of every method against the same actual drops."""
    return {name: lds_scores(p, actual, n_boot) for name, p in predictions.items()}


def seed_agreement(after: np.ndarray) -> dict[str, Any] | None:
    """How well one trainer seed's outcome predicts another's: what retraining noise leaves for any method.

    `after` is [M, R, T] (target losses per subset, seed and target example). Returns the Spearman
    correlation across subsets between the drops of two seeds, averaged over target examples
    (`seed_agreement`) and for the mean target (`seed_agreement_mean_target`), averaged over seed
    pairs; and `lds_ceiling`, the Spearman-Brown estimate sqrt(R r / (1 + (R - 1) r)) of the best
    correlation any prediction can reach with the mean of R seeds (r: the per-target agreement; a
    Pearson formula, so a guide, not a bound). None with one seed.
    """
    a = np.asarray(after, dtype=np.float64)
    _, r, t = a.shape
    if r < 2:
        return None
    pairs = [(i, k) for i in range(r) for k in range(i + 1, r)]
    per = [spearman(a[:, i, j], a[:, k, j]) for i, k in pairs for j in range(t)]
    per = [x for x in per if np.isfinite(x)]
    mean = [spearman(a[:, i].mean(1), a[:, k].mean(1)) for i, k in pairs]
    agree = float(np.mean(per)) if per else float("nan")
    ceiling = float(np.sqrt(r * agree / (1 + (r - 1) * agree))) if agree > 0 else float("nan")
    return {"seed_agreement": agree, "seed_agreement_mean_target": float(np.mean(mean)), "lds_ceiling": ceiling,
            "seeds": r}


METHODS = ("sgd", "sgd-clip", "adamw", "adamw-trajectory", "adamw-final", "predict-sft")


def method_update(method: str, sft: SFTConfig) -> Any:
    """The simulated step of an effect method: plain SGD, SGD clipped as the trainer clips, or the trainer's AdamW."""
    from sample_effect.update.optim import UpdateConfig

    lr, clip = sft.update.lr, sft.update.clip
    if method == "sgd":
        return UpdateConfig("sgd", lr=lr)
    if method == "sgd-clip":
        return UpdateConfig("sgd", lr=lr, clip=clip if clip else 1.0)
    if method in ("adamw", "adamw-trajectory", "adamw-final"):
        return sft.update
    raise SampleEffectError(f"unknown LDS method '{method}'; choose from {', '.join(METHODS)}")


def per_target_effects(model: torch.nn.Module, tok: Any, pool: Sequence[TokenizedExample],
                       target: Sequence[TokenizedExample], update: Any, compute: Any = None) -> np.ndarray:
    """[n, T]: every pool example's effect toward each target example's loss, from one engine pass."""
    from sample_effect.models.loading import select_parameters
    from sample_effect.scoring.matrix import compute_effect_matrix
    from sample_effect.targets.core import LossTarget

    params = select_parameters(model)
    return compute_effect_matrix(model, params, list(pool), [LossTarget([t]) for t in target], update, compute=compute)


def retrain_steps(sft: SFTConfig, subset_size: int) -> int:
    """How many optimiser steps `train_sft` takes on a subset of `subset_size` examples."""
    if sft.max_steps is not None:
        return sft.max_steps
    per_epoch = math.ceil(subset_size / (sft.batch_size * sft.grad_accum))
    return max(1, math.ceil(sft.epochs * per_epoch))


def trajectory_effects(load: Callable[[str], tuple[torch.nn.Module, Any]], base: str, pool: Sequence[TokenizedExample],
                       target: Sequence[TokenizedExample], sft: SFTConfig, steps: int, checkpoints: int,
                       cache_dir: str | os.PathLike, compute: Any = None,
                       say: Callable[[str], None] | None = None) -> np.ndarray:
    """[n, T]: effects summed over `checkpoints` points of one real run on the whole pool, as long as a retrain.

    The run (the trainer's config for `steps` steps, saved every ceil(steps / checkpoints) steps
    under CACHE/trajectory-KEY, reused when it finished) gives the base plus its saved points; each
    contributes lr x its effect matrix under the trainer's update with the saved AdamW state
    (`sample_effect.scoring.checkpoints`). `load(path)` loads a checkpoint directory or `base`.
    """
    from sample_effect.scoring.checkpoints import run_checkpoints, trajectory_effect_matrix
    from sample_effect.targets.core import LossTarget

    out = trajectory_run(load, base, pool, target, sft, steps, checkpoints, cache_dir, say)
    cks = run_checkpoints(out, base=base, lr=sft.update.lr)
    return trajectory_effect_matrix(cks, load, list(pool), [LossTarget([t]) for t in target], sft.update,
                                    compute=compute, say=say)


def trajectory_run(load: Callable[[str], tuple[torch.nn.Module, Any]], base: str, pool: Sequence[TokenizedExample],
                   target: Sequence[TokenizedExample], sft: SFTConfig, steps: int, checkpoints: int,
                   cache_dir: str | os.PathLike, say: Callable[[str], None] | None = None) -> Path:
    """The directory of one real run on the whole pool (`steps` steps, saved every ceil(steps / checkpoints)),
    trained once under CACHE/trajectory-KEY and reused; its `final/` holds the end weights and AdamW state."""
    if checkpoints < 1:
        raise SampleEffectError(f"checkpoints must be >= 1, got {checkpoints}")
    every = max(1, math.ceil(steps / checkpoints))
    run = replace(sft, max_steps=steps, save_every=every)
    out = Path(cache_dir) / f"trajectory-{_key(pool, target, run, base)}"
    if not (out / "final").exists():
        model, tok = load(base)
        train_sft(model, tok, list(pool), run, out_dir=out, progress=False)
        if say:
            say(f"trajectory run: {steps} steps on the whole pool, a checkpoint every {every}")
    return out


def final_effects(load: Callable[[str], tuple[torch.nn.Module, Any]], run_dir: Path, pool: Sequence[TokenizedExample],
                  target: Sequence[TokenizedExample], sft: SFTConfig, compute: Any = None) -> np.ndarray:
    """[n, T]: effects at the end of the whole-pool run, under the trainer's update with the run's final AdamW state
    (where the peers take their gradients, plus the optimiser the trainer really has there)."""
    from sample_effect.models.loading import select_parameters
    from sample_effect.scoring.effects import resolve_state
    from sample_effect.scoring.matrix import compute_effect_matrix
    from sample_effect.targets.core import LossTarget

    model, _ = load(str(run_dir / "final"))
    params = select_parameters(model)
    state = resolve_state(model, params, sft.update, str(run_dir / "final" / "optimizer.pt")) \
        if sft.update.rule.needs_state else None
    return compute_effect_matrix(model, params, list(pool), [LossTarget([t]) for t in target], sft.update, state,
                                 compute)


@dataclass
class LDSTask:
    """What every method is scored on: the pool, the target examples, the retrains' SFT config and subsets, the base
    checkpoint and how to load it or one of its descendants (`load(path)` -> (model, tokenizer))."""

    pool: Sequence[TokenizedExample]
    target: Sequence[TokenizedExample]
    sft: SFTConfig
    subsets: Sequence[np.ndarray]
    base: str
    load: Callable[[str], tuple[torch.nn.Module, Any]]


def method_values(method: str, task: LDSTask, loaded: tuple[torch.nn.Module, Any], checkpoints: int,
                  cache_dir: str | os.PathLike, compute: Any = None, say: Callable[[str], None] | None = None) -> np.ndarray:
    """What one method predicts: the [n, T] effect matrix (sgd, sgd-clip, adamw, adamw-trajectory), or the [M]
    replayed drops per subset (predict-sft). `loaded` is the base (model, tokenizer), already loaded."""
    model, tok = loaded
    if method == "predict-sft":
        return replayed_drops(model, task.pool, task.target, task.sft, task.subsets, compute)
    steps = retrain_steps(task.sft, len(task.subsets[0]))
    if method == "adamw-final":
        run = trajectory_run(task.load, task.base, task.pool, task.target, task.sft, steps, checkpoints, cache_dir, say)
        return final_effects(task.load, run, task.pool, task.target, task.sft, compute)
    if method == "adamw-trajectory":
        return trajectory_effects(task.load, task.base, task.pool, task.target, task.sft, steps, checkpoints, cache_dir,
                                  compute, say)
    return per_target_effects(model, tok, task.pool, task.target, method_update(method, task.sft), compute)


def load_scores(path: str | os.PathLike, pool: Sequence[TokenizedExample], n_target: int) -> np.ndarray:
    """An outside method's scores for `validate lds --scores`: [n] or [n, T], larger = a larger predicted drop.

    A .npy array in the pool's order, or a CSV with an `id` column (the pool's ids) and either one
    score column or one column per target example, in the target file's order.
    """
    import pandas as pd

    p = Path(path)
    if not p.exists():
        raise SampleEffectError(f"--scores: {p} not found")
    if p.suffix == ".npy":
        a = np.load(p).astype(np.float64)
    else:
        df = pd.read_csv(p)
        if "id" not in df.columns:
            raise SampleEffectError(f"--scores: {p} has no 'id' column")
        df = df.set_index(df["id"].astype(str)).drop(columns="id")
        missing = [e.id for e in pool if e.id not in df.index]
        if missing:
            raise SampleEffectError(f"--scores: {p} has no row for {len(missing)} pool example(s), e.g. '{missing[0]}'")
        a = df.loc[[e.id for e in pool]].to_numpy(dtype=np.float64)
        a = a[:, 0] if a.shape[1] == 1 else a
    if a.shape[0] != len(pool) or (a.ndim == 2 and a.shape[1] not in (1, n_target)) or a.ndim > 2:
        raise SampleEffectError(f"--scores: {p} holds shape {a.shape}; expected ({len(pool)},) or ({len(pool)}, {n_target})")
    if not np.isfinite(a).all():
        raise SampleEffectError(f"--scores: {p} holds NaN or Inf")
    return a


def replayed_drops(model: torch.nn.Module, pool: Sequence[TokenizedExample], target: Sequence[TokenizedExample],
                   sft: SFTConfig, subsets: Sequence[np.ndarray], compute: Any = None, replicates: int = 4) -> np.ndarray:
    """[M]: predict-sft's replayed change of the mean target loss over the trainer's whole schedule, per subset."""
    from sample_effect.growth.sft import predict_sft_curve
    from sample_effect.models.loading import select_parameters
    from sample_effect.targets.core import LossTarget, resolve_target

    params = select_parameters(model)
    g = resolve_target(LossTarget(list(target)), model, params, [], compute)
    out = []
    for idx in subsets:
        curve = predict_sft_curve(model, params, [pool[i] for i in idx], g, sft, replicates=replicates,
                                  target_examples=list(target), compute=compute)
        out.append(curve.summary()["predicted_total_change"])
    return np.asarray(out, dtype=np.float64)
