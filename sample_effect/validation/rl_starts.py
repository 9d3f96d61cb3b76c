"""Which SFT start makes RL grow fastest: predicted growth rates against real GRPO runs, per start.

Each start (an SFT checkpoint) goes through `rl_accuracy_curve`: `predict_rl` before training
(growth of held-out accuracy per GRPO step, with a 95% interval), then real `train_grpo` runs from
the same weights. `ordering_verdict` then states, in numbers, whether the predicted order of the
starts is the order the runs took, and which pairs the prediction tells apart with confidence
(their intervals do not overlap).
"""

from __future__ import annotations

import math
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
    """Does the predicted order of the starts match the actual one? Pairwise, with error bars on both sides.

    The rule of `validation.rl_verdict.pair_verdicts`: a pair is a tie when either difference is
    within its tolerance (it orders nothing and never counts as agreement); it is resolved when the
    actual difference exceeds 1.96 times its standard error (from `actual_total_change_se`, which
    needs two runs or more per start) and the predicted 95% intervals do not overlap. `pairs_agreeing`
    counts untied pairs ordered alike, `pairs_agree_resolved` the resolved ones.
    """
    from sample_effect.validation.rl_verdict import Z95, pair_verdicts

    if len(summaries) < 2:
        raise SampleEffectError("an ordering needs at least two starts")
    names = [s["name"] for s in summaries]
    pred = [float(s["predicted_total_change"]) for s in summaries]
    pred_se = [(float(s["predicted_total_change_ci95"][1]) - float(s["predicted_total_change_ci95"][0])) / (2 * Z95)
               for s in summaries]
    act = [float(s["actual_total_change"]) for s in summaries]
    act_se = [float("nan") if s.get("actual_total_change_se") is None else float(s["actual_total_change_se"])
              for s in summaries]
    raw = pair_verdicts(names, pred, pred_se, act, act_se)
    pairs = [{"pair": p["pair"], "predicted_difference": p["predicted_difference"],
              "actual_difference": p["measured_difference"], "actual_difference_se": p["measured_difference_se"],
              "tie": p["tie"], "agree": bool(p["agree"]), "resolved": p["resolved"],
              "predicted_intervals_apart": p["predictor_separates"]} for p in raw]
    untied = [p for p in pairs if not p["tie"]]
    predicted, actual = _order(summaries, "predicted_total_change"), _order(summaries, "actual_total_change")
    agreeing = sum(p["agree"] for p in untied)
    return {
        "predicted_order": predicted, "actual_order": actual, "matched": agreeing == len(pairs),
        "pairs_agreeing": agreeing, "pairs_untied": len(untied), "ties": len(pairs) - len(untied),
        "pairs_resolved": sum(p["resolved"] for p in pairs),
        "pairs_agree_resolved": sum(p["agree"] for p in pairs if p["resolved"]),
        "has_error_bars": all(math.isfinite(x) for x in act_se), "pairs": pairs,
    }


def verdict_text(verdict: Mapping[str, Any]) -> str:
    """A few sentences stating the verdict with its numbers: agreement over untied pairs, ties, resolved pairs."""
    n, ties = len(verdict["pairs"]), verdict.get("ties", 0)
    untied = verdict.get("pairs_untied", n - ties)
    tied = f"; {ties} tied, which orders nothing" if ties else ""
    head = (f"Predicted order {' > '.join(verdict['predicted_order'])}; actual order {' > '.join(verdict['actual_order'])}: "
            f"{'matched' if verdict['matched'] else 'NOT matched'} ({verdict['pairs_agreeing']} of {untied} untied pairs "
            f"agree in sign{tied}).")
    if not verdict.get("has_error_bars", False):
        resolved = ("No pair is resolved: one GRPO run per start gives the actual change no error bar, so a sign "
                    "agreement here may be luck (run two or more per start).")
    else:
        resolved = (f"{verdict['pairs_resolved']} of {n} pairs are resolved (actual gap beyond 1.96 SE and predicted "
                    f"intervals apart); {verdict['pairs_agree_resolved']} of them agree.")
    detail = "; ".join(
        f"{p['pair']}: predicted {p['predicted_difference']:+.3f}, actual {p['actual_difference']:+.3f}"
        f"{' (tie)' if p['tie'] else '' if p['resolved'] else ' (unresolved)'}" for p in verdict["pairs"])
    return f"{head} {resolved} {detail}."
