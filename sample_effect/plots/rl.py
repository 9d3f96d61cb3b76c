"""Figures of RL growth from several starts: predicted against actual held-out accuracy, and the zero-variance share."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from sample_effect.plots.figures import pyplot, save_figure


def clamp_to_range(values: Any, lo: float = 0.0, hi: float = 1.0) -> tuple[Any, list[tuple[int, float]]]:
    """`values` clipped to [lo, hi], and (index, raw value) of every point that was outside it (to label)."""
    import numpy as np

    v = np.asarray(values, dtype=float)
    off = [(i, float(x)) for i, x in enumerate(v) if np.isfinite(x) and not lo <= x <= hi]
    return np.clip(v, lo, hi), off


def rl_start_curves(df: pd.DataFrame, summaries: Sequence[Mapping[str, Any]], path: str | os.PathLike,
                    title: str = "RL from each SFT start: predicted vs actual held-out accuracy") -> None:
    """Left: per start, the measured accuracy (points, one line per run) and the prediction with its 95% band.

    Accuracy lives in [0, 1]: a linear prediction that leaves it is drawn up to the bound, and its
    last point is labelled with the raw value ("off scale"). Right: the share of zero-variance GRPO
    groups (no learning signal) at the start (predicted) and over training (measured), so a flat
    curve can be told from a broken prediction.
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
        mid, off = clamp_to_range(pred["predicted"])
        ax.plot(pred["step"], mid, "--", color=c, label=f"{name}: predicted")
        ax.fill_between(pred["step"], clamp_to_range(pred["predicted_lo"])[0], clamp_to_range(pred["predicted_hi"])[0],
                        color=c, alpha=0.15)
        if off:
            k, raw = off[-1]
            ax.annotate(f"predicted {raw:+.2f} (off scale)", (float(pred["step"].iloc[k]), float(mid[k])), fontsize=7,
                        color=c, xytext=(-90, -12 if raw > 1 else 8), textcoords="offset points")
        if "predicted_replay" in part and part["predicted_replay"].notna().any():
            rep = part.groupby("step")["predicted_replay"].first()
            rmid, roff = clamp_to_range(rep.to_numpy())
            ax.plot(rep.index, rmid, "-.", color=c, lw=1.2, label=f"{name}: replayed")
            if roff:
                k, raw = roff[-1]
                ax.annotate(f"replayed {raw:+.2f} (off scale)", (float(rep.index[k]), float(rmid[k])), fontsize=7,
                            color=c, xytext=(-90, -24 if raw > 1 else 20), textcoords="offset points")
    ax.set_xlabel("GRPO step")
    ax.set_ylabel("held-out accuracy (mean K&K reward)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylim(-0.03, 1.03)
    for bound in (0.0, 1.0):  # an accuracy cannot leave [0, 1]
        ax.axhline(bound, color="0.5", lw=0.8, ls=":")
    ax.legend(fontsize=8)
    ax.set_title("accuracy: points measured, dashes predicted (95% band), dash-dots replayed", fontsize=9)
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


def step_decomposition_plot(df: pd.DataFrame, path: str | os.PathLike,
                            title: str = "Where the RL prediction goes wrong") -> None:
    """The rows of `validation.rl_steps.grpo_step_decomposition`, one colour per start.

    Left: the held-out accuracy change along the real run (points), the running sum of the steps'
    first-order changes <theta_k - theta_{k-1}, G_0> (dashes) and the prediction, k steps of the
    growth rate (dots). Right: along the first step's line theta_0 + t d_1, the measured change
    (points) against t times the first step's first-order change (dashes).
    """
    import numpy as np

    plt = pyplot()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.2))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (name, part) in enumerate(df.groupby("model", sort=False)):
        c = colors[i % len(colors)]
        run, line = part[part["kind"] == "run"], part[part["kind"] == "line"]
        j0 = float(run["accuracy"].iloc[0])
        ax.plot(run["x"], run["accuracy"] - j0, "o-", color=c, label=f"{name}: measured")
        ax.plot(run["x"], np.cumsum(run["first_order"]), "--", color=c, label=f"{name}: sum of steps' first order")
        ax.plot(run["x"], run["predicted_change"], ":", color=c, lw=2, label=f"{name}: predicted")
        if len(line):
            bx.plot(line["x"], line["accuracy"] - j0, "o-", color=c, label=f"{name}: measured")
            bx.plot(line["x"], line["first_order"], "--", color=c, label=f"{name}: t x first step's first order")
    for a in (ax, bx):
        a.axhline(0.0, color="0.5", lw=0.8, ls=":")
        a.set_ylabel("held-out accuracy change")
    ax.set_xlabel("GRPO step")
    ax.set_title("along the real run", fontsize=9)
    bx.set_xscale("log", base=2)
    bx.set_xlabel("t (multiples of the first real step)")
    bx.set_title("along the first step's line theta_0 + t d_1", fontsize=9)
    ax.legend(fontsize=7)
    bx.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path)


def rl_starts_panels(doc: Mapping[str, Any], measurement: str, path: str | os.PathLike) -> None:
    """One panel per predictor: its value per start (x, 95% bar) against the measured growth per step (y, 95% bar).

    `doc` is `validate rl-starts`' record (`rl_starts.json`); each panel's title gives the
    predictor's Spearman [95%] and its agreeing / resolved pairs.
    """
    import math

    plt = pyplot()
    verdicts = doc["by_measurement"][measurement]
    names = list(verdicts)
    cols = min(4, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.1 * rows), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    z = 1.959963984540054
    for k, name in enumerate(names):
        ax = axes[k // cols][k % cols]
        for i, st in enumerate(doc["starts"]):
            p = st["predictors"].get(name)
            m = st["measured"].get(measurement)
            if p is None or m is None:
                continue
            xerr = z * p["se"] if math.isfinite(p["se"]) else 0.0
            yerr = z * m["se"] if math.isfinite(m["se"]) else 0.0
            ax.errorbar(p["value"], m["mean"], xerr=xerr, yerr=yerr, fmt="o", color=colors[i % len(colors)],
                        capsize=2, label=st["name"] if k == 0 else None)
        v = verdicts[name]
        lo, hi = v["spearman_ci95"]
        rho = f"{v['spearman']:+.2f}" if math.isfinite(v["spearman"]) else "n/a (a constant side)"
        ax.set_title(f"{name}\nSpearman {rho} [{lo:+.2f}, {hi:+.2f}]; "
                     f"{v['pairs_agree']}/{v['pairs_resolved']} resolved", fontsize=8)
        ax.axhline(0, color="grey", lw=0.5)
        ax.tick_params(labelsize=7)
        if k % cols == 0:
            ax.set_ylabel(f"measured {measurement} growth / step", fontsize=8)
    for k in range(len(names), rows * cols):
        axes[k // cols][k % cols].axis("off")
    fig.legend(loc="lower center", ncol=min(6, len(doc["starts"])), fontsize=8, frameon=False)
    fig.suptitle(f"Predictors of GRPO growth against {doc['runs']} real runs per start (bars: 95%)", fontsize=10)
    fig.tight_layout(rect=(0, 0.07 if rows < 3 else 0.04, 1, 0.95))
    save_figure(fig, path)
