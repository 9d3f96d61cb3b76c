"""Judging a predictor of RL growth against measured growth rates, with error bars on both sides.

Each start has a measured growth rate (the mean over R GRPO runs of each run's least-squares slope,
with its standard error over runs) and, per predictor, a predicted value with a standard error
(over the predictor's own prompts). `judge_predictor` reports:

- `spearman`: the rank correlation across starts of predicted values and measured mean slopes, and
  `spearman_ci95`, a percentile bootstrap that resamples each start's runs and redraws each
  prediction from a normal with its standard error (the prompts' noise);
- pairwise: a pair of starts is a **tie** when either difference is within `TIE_RTOL` times the
  largest magnitude of its column (a tie orders nothing and never counts as agreement); it is
  **resolved** when the measured difference exceeds 1.96 times its standard error AND the
  predictor's 95% intervals do not overlap; `pairs_agree` counts resolved pairs ordered alike.
  `pairs_agree_untied` / `pairs_untied` is the plain sign agreement over all untied pairs, which
  says nothing about noise and is given for comparison only.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from sample_effect.errors import SampleEffectError
from sample_effect.validation.stability import spearman

TIE_RTOL = 1e-9  # |difference| <= TIE_RTOL * max |value| of the column is a tie
Z95 = 1.959963984540054


def run_summary(runs: Sequence[float]) -> tuple[float, float]:
    """(mean, standard error over runs) of one start's per-run slopes; the SE is nan with one run."""
    r = np.asarray(runs, dtype=float)
    if len(r) == 0:
        raise SampleEffectError("a start has no measured run")
    return float(r.mean()), (float(r.std(ddof=1) / math.sqrt(len(r))) if len(r) > 1 else float("nan"))


def _tol(values: Sequence[float]) -> float:
    finite = [abs(v) for v in values if math.isfinite(v)]
    return TIE_RTOL * max(finite, default=0.0)


def pair_verdicts(names: Sequence[str], pred: Sequence[float], pred_se: Sequence[float], measured: Sequence[float],
                  measured_se: Sequence[float]) -> list[dict[str, Any]]:
    """One record per pair of starts: differences, their standard errors, tie / resolved / agree (see the module)."""
    tol_p, tol_m = _tol(pred), _tol(measured)
    out = []
    for i, j in itertools.combinations(range(len(names)), 2):
        dp, dm = pred[i] - pred[j], measured[i] - measured[j]
        se_m = math.hypot(measured_se[i], measured_se[j])
        tie = abs(dp) <= tol_p or abs(dm) <= tol_m
        lo_i, hi_i = pred[i] - Z95 * pred_se[i], pred[i] + Z95 * pred_se[i]
        lo_j, hi_j = pred[j] - Z95 * pred_se[j], pred[j] + Z95 * pred_se[j]
        separates = lo_i > hi_j or lo_j > hi_i
        measured_resolved = math.isfinite(se_m) and abs(dm) > Z95 * se_m
        out.append({
            "pair": f"{names[i]} vs {names[j]}", "predicted_difference": dp, "measured_difference": dm,
            "measured_difference_se": se_m, "tie": tie,
            "measured_resolved": bool(measured_resolved and not tie), "predictor_separates": bool(separates),
            "resolved": bool(measured_resolved and separates and not tie),
            "agree": None if tie else bool((dp > 0) == (dm > 0)),
        })
    return out


def judge_predictor(
    names: Sequence[str],
    predicted: Sequence[float],
    predicted_se: Sequence[float],
    runs: Sequence[Sequence[float]],
    n_boot: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """Spearman [95%] and the pairwise verdict of one predictor against the starts' measured per-run slopes.

    `predicted_se` may hold 0 (an exact quantity) or nan (unknown: treated as 0 in the bootstrap, and
    such intervals are points). `runs[k]` are start k's per-run slopes.
    """
    if not (len(names) == len(predicted) == len(predicted_se) == len(runs)):
        raise SampleEffectError("judge_predictor needs one predicted value, standard error and run list per start")
    if len(names) < 2:
        raise SampleEffectError("an ordering needs at least two starts")
    p = np.asarray(predicted, dtype=float)
    se = np.nan_to_num(np.asarray(predicted_se, dtype=float), nan=0.0)
    summaries = [run_summary(r) for r in runs]
    m = np.array([s[0] for s in summaries])
    m_se = np.array([s[1] for s in summaries])
    rng = np.random.default_rng(seed)
    boots = np.empty(n_boot)
    for b in range(n_boot):
        mb = np.array([np.mean(np.asarray(r, dtype=float)[rng.integers(0, len(r), len(r))]) for r in runs])
        boots[b] = spearman(p + se * rng.standard_normal(len(p)), mb)
    finite = boots[np.isfinite(boots)]
    ci = [float(np.percentile(finite, 2.5)), float(np.percentile(finite, 97.5))] if len(finite) else [math.nan, math.nan]
    pairs = pair_verdicts(list(names), list(p), list(se), list(m), list(m_se))
    untied = [q for q in pairs if not q["tie"]]
    resolved = [q for q in pairs if q["resolved"]]
    return {
        "spearman": spearman(p, m), "spearman_ci95": ci, "n_bootstrap": n_boot,
        "pairs": len(pairs), "ties": len(pairs) - len(untied), "pairs_untied": len(untied),
        "pairs_agree_untied": sum(bool(q["agree"]) for q in untied),
        "pairs_measured_resolved": sum(q["measured_resolved"] for q in pairs),
        "pairs_resolved": len(resolved), "pairs_agree": sum(bool(q["agree"]) for q in resolved),
        "pair_verdicts": pairs,
    }


def verdict_markdown(by_measurement: Mapping[str, Mapping[str, Mapping[str, Any]]], starts: Sequence[str],
                     runs: int) -> str:
    """The short markdown verdict: per measurement, one row per predictor (Spearman [95%], agreeing / resolved pairs)."""
    lines = [f"# Which start does GRPO improve fastest: {len(starts)} starts ({', '.join(starts)}), {runs} GRPO runs each", ""]
    for measurement, predictors in by_measurement.items():
        lines += [f"## Measured: {measurement} growth per step", "",
                  "| predictor | Spearman [95%] | agree / resolved pairs | sign agreement, untied pairs | ties |",
                  "|---|---|---|---|---|"]
        best = None
        for name, v in predictors.items():
            lo, hi = v["spearman_ci95"]
            rho = f"{v['spearman']:+.2f}" if math.isfinite(v["spearman"]) else "n/a"
            lines.append(f"| {name} | {rho} [{lo:+.2f}, {hi:+.2f}] | {v['pairs_agree']} / {v['pairs_resolved']} "
                         f"| {v['pairs_agree_untied']} / {v['pairs_untied']} | {v['ties']} |")
            if math.isfinite(v["spearman"]) and (best is None or v["spearman"] > predictors[best]["spearman"]):
                best = name
        any_pred = next(iter(predictors.values()), None)
        resolved_m = any_pred["pairs_measured_resolved"] if any_pred else 0
        n_pairs = any_pred["pairs"] if any_pred else 0
        lines += ["", f"The runs resolve {resolved_m} of {n_pairs} pairs of starts (measured difference > 1.96 SE); "
                  "the other pairs cannot be ordered by any predictor at this number of runs."]
        if best is not None:
            lo, hi = predictors[best]["spearman_ci95"]
            lines.append(f"Highest Spearman: {best} ({predictors[best]['spearman']:+.2f} [{lo:+.2f}, {hi:+.2f}]); "
                         "predictors whose intervals overlap it are not told apart by this experiment.")
        lines.append("")
    return "\n".join(lines)
