"""Which SFT start makes RL grow fastest: predicted growth rates against real GRPO runs, per start.

Each start (an SFT checkpoint) goes through `rl_accuracy_curve`: `predict_rl` before training
(growth of held-out accuracy per GRPO step, with a 95% interval), then real `train_grpo` runs from
the same weights. `ordering_verdict` then states, in numbers, whether the predicted order of the
starts is the order the runs took, and which pairs the prediction tells apart with confidence
(their intervals do not overlap).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from sample_effect.engine.core import ComputeConfig
from sample_effect.errors import SampleEffectError
from sample_effect.rollouts.prompts import RLPrompt
from sample_effect.training.grpo import GRPOConfig
from sample_effect.validation.rl_accuracy import AccuracyCurveConfig, Loader, rl_accuracy_curve


def compare_rl_starts(
    starts: Mapping[str, Loader],
    prompts: Sequence[RLPrompt],
    eval_prompts: Sequence[RLPrompt],
    reward: Callable[..., float] | str,
    cfg: GRPOConfig,
    curve: AccuracyCurveConfig | None = None,
    compute: ComputeConfig | None = None,
    out_dir: str | os.PathLike | None = None,
    say: Callable[[str], None] | None = None,
) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """Predicted and actual held-out accuracy curves of every start; (all rows, one summary per start).

    With `out_dir` the GRPO checkpoints of start NAME are kept under out_dir/NAME/run-R.
    """
    if len(starts) < 1:
        raise SampleEffectError("compare_rl_starts needs at least one start")
    frames, summaries = [], []
    for name, load in starts.items():
        if say is not None:
            say(f"RL from '{name}': predict-rl, then {cfg.steps} real GRPO steps")
        where = Path(out_dir) / name if out_dir is not None else None
        df, summary = rl_accuracy_curve(name, load, prompts, eval_prompts, reward, cfg, curve, compute, out_dir=where)
        frames.append(df)
        summaries.append(summary)
        if say is not None:
            lo, hi = summary["predicted_total_change_ci95"]
            say(f"  {name}: predicted accuracy change {summary['predicted_total_change']:+.3f} [{lo:+.3f}, {hi:+.3f}], "
                f"actual {summary['actual_total_change']:+.3f} (start {summary['start_accuracy']:.3f}; "
                f"zero-variance groups {summary['predicted_zero_variance_fraction']:.0%})")
    return pd.concat(frames, ignore_index=True), summaries


def _order(summaries: Sequence[Mapping[str, Any]], key: str) -> list[str]:
    """Start names from the largest to the smallest value of `key` (ties keep the input order)."""
    return [s["name"] for s in sorted(summaries, key=lambda s: -float(s[key]))]


def ordering_verdict(summaries: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Does the predicted order of the starts match the actual one? Pairwise, with the prediction's intervals.

    A pair counts as `resolved` when the predicted 95% intervals of its total change do not
    overlap; `agree` says whether the predicted sign of the difference is the actual sign.
    """
    if len(summaries) < 2:
        raise SampleEffectError("an ordering needs at least two starts")
    pairs = []
    for a, b in itertools.combinations(summaries, 2):
        pred = float(a["predicted_total_change"]) - float(b["predicted_total_change"])
        act = float(a["actual_total_change"]) - float(b["actual_total_change"])
        (alo, ahi), (blo, bhi) = a["predicted_total_change_ci95"], b["predicted_total_change_ci95"]
        pairs.append({
            "pair": f"{a['name']} vs {b['name']}", "predicted_difference": pred, "actual_difference": act,
            "agree": (pred > 0) == (act > 0) if pred != 0 and act != 0 else False,
            "resolved": alo > bhi or blo > ahi,
        })
    predicted, actual = _order(summaries, "predicted_total_change"), _order(summaries, "actual_total_change")
    agreeing = sum(p["agree"] for p in pairs)
    # A tie (a difference of exactly 0, e.g. every group zero-variance) orders nothing, so it never counts as a match.
    return {
        "predicted_order": predicted, "actual_order": actual, "matched": agreeing == len(pairs),
        "pairs_agreeing": agreeing, "pairs": pairs,
        "ties": sum(p["predicted_difference"] == 0 or p["actual_difference"] == 0 for p in pairs),
    }


def verdict_text(verdict: Mapping[str, Any]) -> str:
    """One or two sentences stating the verdict with its numbers."""
    n, ties = len(verdict["pairs"]), verdict.get("ties", 0)
    tied = f"; {ties} tied, which orders nothing" if ties else ""
    head = (f"Predicted order {' > '.join(verdict['predicted_order'])}; actual order {' > '.join(verdict['actual_order'])}: "
            f"{'matched' if verdict['matched'] else 'NOT matched'} ({verdict['pairs_agreeing']} of {n} pairs agree in sign{tied}).")
    detail = "; ".join(
        f"{p['pair']}: predicted {p['predicted_difference']:+.3f}, actual {p['actual_difference']:+.3f}"
        f"{'' if p['resolved'] else ' (predicted intervals overlap)'}" for p in verdict["pairs"])
    return f"{head} {detail}."
