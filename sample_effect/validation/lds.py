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
import os
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


def _key(pool: Sequence[TokenizedExample], target: Sequence[TokenizedExample], sft: SFTConfig, base: str) -> str:
    blob = json.dumps({"pool": [e.id for e in pool], "target": [e.id for e in target], "sft": asdict(sft), "base": base},
                      sort_keys=True, default=str)
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
            model, tok = load()
            torch.manual_seed(sft.seed + r)
            train_sft(model, tok, [pool[i] for i in idx], replace(sft, seed=sft.seed + r), progress=False)
            out[m, r] = target_losses(model, target)
            with atomic_open(f) as fh:
                json.dump({"subset": [int(i) for i in idx], "seed": sft.seed + r, "losses": out[m, r].tolist()}, fh)
            if say:
                say(f"retrained subset {m + 1}/{len(subsets)} seed {r}: mean target loss {out[m, r].mean():.4f}")
    return out


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


METHODS = ("sgd", "sgd-clip", "adamw", "predict-sft")


def method_update(method: str, sft: SFTConfig) -> Any:
    """The simulated step of an effect method: plain SGD, SGD clipped as the trainer clips, or the trainer's AdamW."""
    from sample_effect.update.optim import UpdateConfig

    lr, clip = sft.update.lr, sft.update.clip
    if method == "sgd":
        return UpdateConfig("sgd", lr=lr)
    if method == "sgd-clip":
        return UpdateConfig("sgd", lr=lr, clip=clip if clip else 1.0)
    if method == "adamw":
        return sft.update
    raise SampleEffectError(f"unknown LDS method '{method}'; choose from {', '.join(METHODS)}")


def per_target_effects(model: torch.nn.Module, tok: Any, pool: Sequence[TokenizedExample],
                       target: Sequence[TokenizedExample], update: Any, compute: Any = None) -> np.ndarray:
    """[n, T]: every pool example's effect toward each target example's loss, one engine run per target example."""
    from sample_effect.scoring.effects import score_examples_result
    from sample_effect.targets.core import LossTarget

    cols = [score_examples_result(model, tok, list(pool), LossTarget([t]), update, compute=compute).effect for t in target]
    return np.stack(cols, axis=1).astype(np.float64)


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
