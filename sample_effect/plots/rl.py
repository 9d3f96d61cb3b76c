"""Figures of RL growth from several starts: predicted against actual held-out accuracy, and the zero-variance share."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from sample_effect.plots.figures import pyplot, save_figure


def rl_start_curves(df: pd.DataFrame, summaries: Sequence[Mapping[str, Any]], path: str | os.PathLike,
                    title: str = "RL from each SFT start: predicted vs actual held-out accuracy") -> None:
    """Left: per start, the measured accuracy (points, one line per run) and the prediction with its 95% band.

    Right: the share of zero-variance GRPO groups (no learning signal) at the start (predicted)
    and over training (measured), so a flat curve can be told from a broken prediction.
    """
    plt = pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [2.2, 1]})
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (name, part) in enumerate(df.groupby("model", sort=False)):
        c = colors[i % len(colors)]
        for r, run in part.groupby("run"):
            ax.plot(run["step"], run["actual"], "o-", color=c, alpha=0.8, label=f"{name}: actual" if r == 0 else None)
        pred = part.groupby("step")[["predicted", "predicted_lo", "predicted_hi"]].first().reset_index()
        ax.plot(pred["step"], pred["predicted"], "--", color=c, label=f"{name}: predicted")
        ax.fill_between(pred["step"], pred["predicted_lo"], pred["predicted_hi"], color=c, alpha=0.15)
    ax.set_xlabel("GRPO step")
    ax.set_ylabel("held-out accuracy (mean K&K reward)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    lo = min(0.0, float(df[["actual", "predicted_lo"]].min().min()))
    hi = max(1.0, float(df[["actual", "predicted_hi"]].max().max())) if df["actual"].max() > 0.5 else \
        min(1.0, max(0.1, float(df[["actual", "predicted_hi"]].max().max()) * 1.3))
    ax.set_ylim(lo - 0.02, hi + 0.02)
    for bound in (0.0, 1.0):  # an accuracy cannot leave [0, 1]; a band beyond it is the linear prediction's, not the run's
        ax.axhline(bound, color="0.5", lw=0.8, ls=":")
    if lo < 0:
        ax.axhspan(lo - 0.02, 0.0, color="0.9", zorder=0)
        ax.text(0.01, 0.02, "below 0: outside what accuracy can reach (first-order prediction only)",
                transform=ax.transAxes, fontsize=7, color="0.35")
    ax.legend(fontsize=8)
    ax.set_title("accuracy: points measured, dashes predicted (95% band)", fontsize=9)
    names = [s["name"] for s in summaries]
    x = range(len(names))
    pz = [float(s["predicted_zero_variance_fraction"]) for s in summaries]
    tz = [float(s["train_zero_variance_fraction"]) if s.get("train_zero_variance_fraction") is not None else float("nan")
          for s in summaries]
    bx.bar([i - 0.2 for i in x], pz, 0.4, color="0.35", label="at the start (predict-rl groups)")
    bx.bar([i + 0.2 for i in x], tz, 0.4, color="0.7", label="during GRPO (mean per step)")
    bx.set_xticks(list(x), names, fontsize=8)
    bx.set_ylim(0, 1.05)
    bx.set_ylabel("share of zero-variance groups")
    bx.legend(fontsize=8)
    bx.set_title("no learning signal (all rewards equal)", fontsize=9)
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path)
