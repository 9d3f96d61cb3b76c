"""Rank stability: is the top-k of a ranking still the top-k under resampled targets, other
checkpoints and other example orders?

`rank_stability` scores the same examples several more times and compares each ranking with the
reference one (the ranking `rank` writes) by Spearman's rho and by the top-k overlap
|top-k ∩ top-k_ref| / k. Three sources of variation, each a `source` in the report:

- ``target-resample``: the target set is bootstrap-resampled (drawn with replacement, same
  size) and the examples are re-ranked toward G over the resample. This is the question "would a
  different validation set of the same kind pick the same examples?".
- ``checkpoint:<path>``: the same examples and target scored at another saved model state
  (e.g. the last k checkpoints of a run). "Does my ranking depend on exactly when I computed it?"
- ``order``: the examples shuffled and cut into chunks of another size. The engine treats each
  example alone, so this must give Spearman 1 and overlap 1 (up to float rounding: the column
  `max_rel_diff` shows how much the effects moved); anything else is a bug, not instability.

Resampling the target set exactly and cheaply. An effect is linear in G: e(s) = <Δθ(s), G> / lr,
the simulated update Δθ(s) does not depend on G (for SGD, Adam and AdamW, clipped or not), and for
a loss target G = mean over target examples t of -grad l_t. So with the n x T matrix
E[s, t] = e(s) toward the one-example target {t}, the effects toward a bootstrap resample with
counts c_t are exactly E @ (c / T). Building E costs T scoring passes; re-scoring each resample
with a `LossTarget` over the resampled examples (duplicates count twice, so it is the same
weighted mean) costs one pass per resample. `resample_method="auto"` takes whichever needs fewer
passes (the matrix when T <= resamples); both use the same bootstrap draws and give the same
numbers up to float rounding (tested).

Ties and small sets. Top-k is taken as in the ranked table: largest effect first, ties by input
order, non-finite effects last. Spearman uses average ranks for ties and only the examples whose
effect is finite in both rankings; it is NaN when either ranking is constant. A `top_k` larger
than the number of examples n is cut to n (then the overlap is trivially 1; the report's `note`
says so).

Intervals. `StabilityReport.summary()` gives per source the mean and a 95% interval: the 2.5th and
97.5th percentiles over the runs (lower / higher observed value, so the ends are values that
occurred) when there are at least 5 runs, else the min-max range.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from sample_effect.data.examples import Example, TokenizedExample, tokenize_examples
from sample_effect.engine.core import ComputeConfig
from sample_effect.errors import ConfigError, SampleEffectError, literal
from sample_effect.models.loading import load_model
from sample_effect.scoring.effects import ScoringConfig
from sample_effect.scoring.result import Effects
from sample_effect.targets.core import LossTarget, Target
from sample_effect.update.optim import UpdateConfig

log = logging.getLogger("sample_effect")

SOURCES = ("target-resample", "checkpoint", "order")
RESAMPLE_METHODS = ("auto", "matrix", "rescore")
ROW_COLUMNS = ["source", "index", "spearman", "topk_overlap", "n_common", "max_rel_diff", "detail"]
MIN_PERCENTILE_RUNS = 5  # fewer runs than this: the interval is the min-max range
STABLE = 0.8  # verdict "stable": the interval's lower end of the top-k overlap is at least this
UNSTABLE = 0.5  # verdict "unstable": the mean top-k overlap is below this


@dataclass
class StabilityConfig:
    """What `rank_stability` varies.

    resamples: bootstrap resamples of the target set (0 = none). checkpoints: other model
    directories to score at (e.g. the last k saved states of a run). orders: extra shuffled
    example orders / chunkings (0 = none). top_k: the k of the top-k overlap. seed: seed of the
    resamples and orders. resample_method: "auto", "matrix" (per-target-example effect matrix)
    or "rescore" (one scoring pass per resample); see the module docstring.
    """

    resamples: int = 8
    checkpoints: list[str | os.PathLike] = field(default_factory=list)
    orders: int = 2
    top_k: int = 10
    seed: int = 0
    resample_method: str = "auto"

    def validate(self) -> StabilityConfig:
        """Raise SampleEffectError naming the bad field; return self. (Checkpoints are checked when loaded: a
        custom `load_checkpoint` may take names that are not directories.)"""
        for name in ("resamples", "orders"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ConfigError("StabilityConfig", f"<{name}> must be an integer >= 0, got {literal(repr(v))}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 1:
            raise ConfigError("StabilityConfig", f"<top_k> must be an integer >= 1, got {literal(repr(self.top_k))}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ConfigError("StabilityConfig", f"<seed> must be an integer, got {literal(repr(self.seed))}")
        if isinstance(self.checkpoints, (str, os.PathLike)):
            raise ConfigError("StabilityConfig", "<checkpoints> must be a list of model directories, got the single "
                                                 f"path {str(self.checkpoints)!r}")
        bad = [p for p in self.checkpoints if not isinstance(p, (str, os.PathLike))]
        if bad:
            raise ConfigError("StabilityConfig", f"<checkpoints> holds {literal(repr(bad[0]))}, not a path")
        if self.resample_method not in RESAMPLE_METHODS:
            raise SampleEffectError(f"StabilityConfig.resample_method must be one of {', '.join(RESAMPLE_METHODS)}, "
                                    f"got {self.resample_method!r}")
        if self.resamples == 0 and self.orders == 0 and not self.checkpoints:
            raise SampleEffectError("StabilityConfig: nothing to compare (resamples = 0, orders = 0, no checkpoints)")
        return self


@dataclass
class StabilityReport:
    """One row per comparison with the reference ranking (`rows`, columns `ROW_COLUMNS`)."""

    rows: pd.DataFrame
    k: int  # the top-k used (top_k cut to the number of examples)
    n: int  # examples ranked
    note: str = ""  # e.g. that top_k was cut to n

    def summary(self) -> pd.DataFrame:
        """Per source (in row order): runs, mean and 95% interval of Spearman, top-k overlap and kept count."""
        out = []
        for source, g in self.rows.groupby("source", sort=False):
            rec: dict[str, Any] = {"source": source, "runs": len(g)}
            for col in ("spearman", "topk_overlap", "n_common"):
                mean, lo, hi = interval(g[col].to_numpy(dtype=float))
                rec.update({col: mean, f"{col}_lo": lo, f"{col}_hi": hi})
            rec["interval"] = "percentile 95%" if len(g) >= MIN_PERCENTILE_RUNS else "min-max"
            out.append(rec)
        return pd.DataFrame(out)

    def verdicts(self) -> list[str]:
        """One plain-language line per source, e.g. 'top-10 keeps 8.5/10 [7, 10] of its examples under resampled targets'."""
        lines = []
        for rec in self.summary().to_dict("records"):
            kept = _count(rec["n_common"])
            where = _where(rec["source"])
            span = "" if rec["runs"] == 1 else f" [{_count(rec['n_common_lo'])}, {_count(rec['n_common_hi'])}]"
            rho = f"Spearman {rec['spearman']:.3f}" + (
                "" if rec["runs"] == 1 else f" [{rec['spearman_lo']:.3f}, {rec['spearman_hi']:.3f}]")
            runs = f", {rec['runs']} runs" if rec["runs"] > 1 else ""
            judged = "trivial, the top-k is every example" if self.k >= self.n else \
                _judge(rec["topk_overlap"], rec["topk_overlap_lo"])
            lines.append(f"top-{self.k} keeps {kept}/{self.k}{span} of its examples {where} "
                         f"({rho}{runs}): {judged}")
        if self.note:
            lines.append(f"note: {self.note}")
        return lines

    def render(self) -> str:
        """The summary table and the verdict lines, as printed by `rank --stability`."""
        table = self.summary()
        shown = pd.DataFrame({
            "source": table["source"],
            "runs": table["runs"],
            "spearman": [f"{m:.3f} [{lo:.3f}, {hi:.3f}]" for m, lo, hi in
                         zip(table["spearman"], table["spearman_lo"], table["spearman_hi"])],
            f"top-{self.k} overlap": [f"{m:.3f} [{lo:.3f}, {hi:.3f}]" for m, lo, hi in
                                      zip(table["topk_overlap"], table["topk_overlap_lo"], table["topk_overlap_hi"])],
            "interval": table["interval"],
        })
        return shown.to_string(index=False) + "\n" + "\n".join(self.verdicts())


def _count(x: float) -> str:
    return "nan" if not np.isfinite(x) else (f"{x:.0f}" if float(x).is_integer() else f"{x:.1f}")


def _where(source: str) -> str:
    if source == "target-resample":
        return "under resampled targets"
    if source == "order":
        return "under other example orders and chunkings"
    return f"at {source.removeprefix('checkpoint:')}"


def _judge(mean: float, lo: float) -> str:
    if not np.isfinite(mean):
        return "undefined"
    if lo >= STABLE:
        return "stable"
    return "unstable" if mean < UNSTABLE else "partly stable"


def interval(values: Sequence[float] | np.ndarray) -> tuple[float, float, float]:
    """(mean, low, high) of the finite values: 2.5/97.5 percentiles (observed values) from 5 values, else min-max."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return (float("nan"),) * 3
    if v.size < MIN_PERCENTILE_RUNS:
        return float(v.mean()), float(v.min()), float(v.max())
    return float(v.mean()), float(np.percentile(v, 2.5, method="lower")), float(np.percentile(v, 97.5, method="higher"))


# --------------------------------------------------------------------------------------------
# Rank statistics
# --------------------------------------------------------------------------------------------


def average_ranks(x: Sequence[float] | np.ndarray) -> np.ndarray:
    """1-based ranks of `x` (ascending), tied values sharing the mean of their ranks (scipy's `rankdata`)."""
    from scipy.stats import rankdata

    return np.asarray(rankdata(np.asarray(x, dtype=float), method="average"), dtype=float)


def spearman(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> float:
    """Spearman's rho of paired values (average ranks for ties; pairs with a non-finite value dropped).

    NaN when fewer than 2 pairs remain or either side is constant.
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise SampleEffectError(f"spearman: {a.shape} and {b.shape} values do not pair up")
    keep = np.isfinite(a) & np.isfinite(b)
    if keep.sum() < 2:
        return float("nan")
    ra, rb = average_ranks(a[keep]), average_ranks(b[keep])
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = float(np.sqrt((ra**2).sum() * (rb**2).sum()))
    return float("nan") if denom == 0 else float(np.clip((ra * rb).sum() / denom, -1.0, 1.0))


def top_k_indices(effect: Sequence[float] | np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest effects, as the ranked table orders them (ties by input order, non-finite last)."""
    e = np.asarray(effect, dtype=float)
    key = np.where(np.isfinite(e), -e, np.inf)
    return np.argsort(key, kind="stable")[: min(k, len(e))]


def top_k_overlap(reference: Sequence[float] | np.ndarray, other: Sequence[float] | np.ndarray, k: int) -> int:
    """|top-k(other) ∩ top-k(reference)|, the number of reference top-k examples `other` keeps."""
    return len(set(top_k_indices(reference, k).tolist()) & set(top_k_indices(other, k).tolist()))


def compare(reference: np.ndarray, other: np.ndarray, k: int) -> dict[str, float]:
    """Spearman, top-k overlap (fraction and count) and the largest change relative to max |reference|."""
    common = top_k_overlap(reference, other, k)
    both = np.isfinite(reference) & np.isfinite(other)
    scale = float(np.abs(reference[both]).max()) if both.any() else 0.0
    diff = float(np.abs(other[both] - reference[both]).max()) if both.any() else float("nan")
    return {"spearman": spearman(reference, other), "topk_overlap": common / k, "n_common": common,
            "max_rel_diff": diff / scale if scale > 0 else diff}


# --------------------------------------------------------------------------------------------
# The runs
# --------------------------------------------------------------------------------------------


def _effects(scoring: ScoringConfig, model: Any, tokenizer: Any, examples: Sequence[TokenizedExample], target: Target,
             optimizer_state: Any = None, compute: ComputeConfig | None = None) -> np.ndarray:
    """Effects of one more scoring run (input order), optionally under another optimiser state or compute."""
    if optimizer_state is not None:
        scoring = replace(scoring, optimizer_state=optimizer_state)
    if compute is not None:
        scoring = replace(scoring, compute=compute)
    return np.asarray(scoring.result(model, tokenizer, list(examples), target).effect, dtype=float)


def _tokenized(examples: Sequence[Example] | Sequence[TokenizedExample], tokenizer: Any,
               max_length: int | None) -> list[TokenizedExample]:
    if examples and isinstance(examples[0], Example):
        return tokenize_examples(list(examples), tokenizer, max_length)[0]  # type: ignore[arg-type]
    return list(examples)  # type: ignore[arg-type]


def bootstrap_draws(n_targets: int, resamples: int, seed: int) -> list[np.ndarray]:
    """`resamples` bootstrap index draws (with replacement, size n_targets) from numpy's default_rng(seed)."""
    rng = np.random.default_rng([seed, 1])
    return [rng.integers(0, n_targets, size=n_targets) for _ in range(resamples)]


def _resample_effects(scoring: ScoringConfig, model: Any, tokenizer: Any, examples: list[TokenizedExample],
                      targets: list[TokenizedExample], draws: list[np.ndarray], method: str,
                      bar: Any) -> list[np.ndarray]:
    """Effects toward each bootstrap resample of the target set (see the module docstring for the two ways)."""
    if method == "auto":
        method = "matrix" if len(targets) <= len(draws) else "rescore"
    if method == "rescore":
        out = []
        for d in draws:
            out.append(_effects(scoring, model, tokenizer, examples, LossTarget([targets[i] for i in d])))
            bar.update(1)
        return out
    bar.set_postfix_str(f"effect matrix over {len(targets)} target examples")
    matrix = np.stack([_effects(scoring, model, tokenizer, examples, LossTarget([t])) for t in targets], axis=1)
    out = []
    for d in draws:
        weights = np.bincount(d, minlength=len(targets)) / len(targets)
        out.append(matrix @ weights)
        bar.update(1)
    bar.set_postfix_str("")
    return out


def _checkpoint_state(optimizer_state: Any, path: str | os.PathLike) -> Any:
    """A Trainer-checkpoint optimiser state goes with its checkpoint: use the checkpoint's own optimizer.pt."""
    if isinstance(optimizer_state, (str, os.PathLike)) and Path(optimizer_state).is_dir() \
            and (Path(path) / "optimizer.pt").exists():
        return str(path)
    return optimizer_state


def _order_effects(scoring: ScoringConfig, model: Any, tokenizer: Any, examples: list[TokenizedExample], target: Target,
                   j: int, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """Effects (back in input order) with the examples shuffled and chunked by another chunk size."""
    perm = rng.permutation(len(examples))
    chunk = max(1, scoring.compute.batch_size // (j + 2))
    shuffled = _effects(scoring, model, tokenizer, [examples[i] for i in perm], target,
                               compute=replace(scoring.compute, batch_size=chunk))
    effect = np.empty(len(examples))
    effect[perm] = shuffled
    return effect, f"shuffled (seed {j}), chunk size {chunk}"


def rank_stability(
    model: torch.nn.Module,
    tokenizer: Any,
    examples: Sequence[Example] | Sequence[TokenizedExample],
    target_examples: Sequence[Example] | Sequence[TokenizedExample] | None,
    scoring: ScoringConfig | UpdateConfig | None = None,
    compute: ComputeConfig | None = None,
    config: StabilityConfig | None = None,
    load_checkpoint: Callable[[str], tuple[torch.nn.Module, Any]] | None = None,
    *,
    target: Target | None = None,
    reference: Effects | np.ndarray | None = None,
) -> StabilityReport:
    """How stable the ranking of `examples` is under resampled targets, other checkpoints and orders.

    The reference ranking is `reference` (the effects `rank` computed, in input order) or, if None,
    computed here toward `target` (default: `LossTarget` over `target_examples`). Target resampling
    needs `target_examples` (the set G is the mean loss gradient over; for `--target self` the
    scored examples); with another target (a direction, an accuracy target) pass `target`,
    `target_examples=None` and `config.resamples = 0`. Checkpoints are loaded with
    `load_checkpoint(path)` -> (model, tokenizer) (default: `load_model` in the model's dtype);
    raw `Example`s are re-tokenised with each checkpoint's tokenizer, and a Trainer-checkpoint
    `optimizer_state` directory is replaced by the checkpoint's own when it has an optimizer.pt.
    Progress is one tqdm bar on stderr when `compute.progress`. See the module docstring.

    `scoring` holds the scorer's settings (`ScoringConfig`: update, compute, params, optimizer_state,
    max_length); an `UpdateConfig` there is shorthand for `ScoringConfig(update, compute)`, and
    `compute` is only taken with it.
    """
    config = (config or StabilityConfig()).validate()
    if isinstance(scoring, ScoringConfig):
        if compute is not None:
            raise ConfigError("rank_stability", "<compute> goes inside <scoring> when that is a ScoringConfig")
        compute = scoring.compute
    else:
        compute = compute or ComputeConfig()
        scoring = ScoringConfig((scoring or UpdateConfig()), compute)
    scoring = replace(scoring, update=scoring.update.validate(), compute=replace(compute, progress=False))
    max_length = scoring.max_length
    if target_examples is None and config.resamples:
        raise ConfigError("StabilityConfig", "<resamples> needs a target set to resample (a loss target); "
                                             "set it to 0 for other targets")
    if target is None and target_examples is None:
        raise SampleEffectError("rank_stability needs target_examples or a target")
    missing = [p for p in config.checkpoints if load_checkpoint is None and not Path(p).is_dir()]
    if missing:
        raise ConfigError("StabilityConfig", f"<checkpoints>: not a directory: {literal(missing[0])}")
    tokenized = _tokenized(examples, tokenizer, max_length)
    if len(tokenized) < 2:
        raise SampleEffectError(f"rank stability needs at least 2 examples, got {len(tokenized)}")
    targets = None if target_examples is None else _tokenized(target_examples, tokenizer, max_length)
    target = target or LossTarget(targets)  # type: ignore[arg-type]
    n = len(tokenized)
    k = min(config.top_k, n)
    note = f"top_k {config.top_k} > {n} examples: cut to {n}, so the overlap is 1 by construction" \
        if config.top_k > n else ""
    total = config.resamples + len(config.checkpoints) + config.orders + (reference is None)
    rows: list[dict[str, Any]] = []
    with tqdm(total=total, desc="stability", unit="run", disable=not compute.progress) as bar:
        if reference is None:
            ref = _effects(scoring, model, tokenizer, tokenized, target)
            bar.update(1)
        else:
            ref = np.asarray(reference.effect if isinstance(reference, Effects) else reference, dtype=float)
            if ref.shape != (n,):
                raise SampleEffectError(f"reference has {ref.size} effects for {n} examples")
        if config.resamples:
            draws = bootstrap_draws(len(targets), config.resamples, config.seed)  # type: ignore[arg-type]
            found = _resample_effects(scoring, model, tokenizer, tokenized, targets, draws,  # type: ignore[arg-type]
                                      config.resample_method, bar)
            for i, (d, eff) in enumerate(zip(draws, found)):
                detail = f"{len(set(d.tolist()))} of {len(d)} target examples distinct"
                rows.append({"source": "target-resample", "index": i, **compare(ref, eff, k), "detail": detail})
        for i, path in enumerate(config.checkpoints):
            eff = _checkpoint_effects(scoring, model, path, examples, target_examples, target, load_checkpoint)
            rows.append({"source": f"checkpoint:{path}", "index": i, **compare(ref, eff, k), "detail": str(path)})
            bar.update(1)
        rng = np.random.default_rng([config.seed, 2])
        for j in range(config.orders):
            eff, detail = _order_effects(scoring, model, tokenizer, tokenized, target, j, rng)
            rows.append({"source": "order", "index": j, **compare(ref, eff, k), "detail": detail})
            bar.update(1)
    return StabilityReport(rows=pd.DataFrame(rows, columns=ROW_COLUMNS), k=k, n=n, note=note)


def _checkpoint_effects(scoring: ScoringConfig, model: torch.nn.Module, path: str | os.PathLike,
                        examples: Sequence[Any], target_examples: Sequence[Any] | None, target: Target,
                        load_checkpoint: Callable[[str], tuple[torch.nn.Module, Any]] | None) -> np.ndarray:
    """Effects of the same examples toward the same target, at the checkpoint `path` (loaded, scored, dropped)."""
    if load_checkpoint is None:
        dtype = next(model.parameters()).dtype
        device = next(model.parameters()).device
        ckpt, tok = load_model(path, dtype, device)
    else:
        ckpt, tok = load_checkpoint(str(path))
    exs = _tokenized(examples, tok, scoring.max_length)
    if target_examples is not None and target.hessian_examples() is not None:  # a target set: retokenized here
        target = LossTarget(_tokenized(target_examples, tok, scoring.max_length), name=target.name)
    try:
        return _effects(scoring, ckpt, tok, exs, target, optimizer_state=_checkpoint_state(scoring.optimizer_state, path))
    finally:
        del ckpt
