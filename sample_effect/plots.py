"""Figures, written as PNG (or SVG by extension) with titles, labelled axes and legends."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | os.PathLike) -> None:  # type: ignore[no-untyped-def]
    from .io import atomic_path

    fig.tight_layout()
    suffix = os.path.splitext(str(path))[1].lstrip(".") or "png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=130, format=suffix)
    _plt().close(fig)


def effects_by_group(table: pd.DataFrame, group: str, path: str | os.PathLike, title: str = "Sample effect by group") -> None:
    """Box plot with points: the distribution of sample effects per group (e.g. response style)."""
    plt = _plt()
    groups = list(table.groupby(group)["effect"].mean().sort_values(ascending=False).index)
    fig, ax = plt.subplots(figsize=(6.4, 4))
    data = [table.loc[table[group] == g, "effect"].to_numpy() for g in groups]
    ax.boxplot(data, showfliers=False)
    ax.set_xticks(range(1, len(groups) + 1), groups)
    for i, d in enumerate(data, start=1):
        ax.scatter([i] * len(d), d, s=10, alpha=0.5)
    ax.axhline(0, color="grey", lw=0.8, ls="--")
    ax.set_xlabel(group)
    ax.set_ylabel("sample effect e(s) (target change per unit lr)")
    ax.set_title(title)
    _save(fig, path)


def curves(runs: Mapping[str, pd.DataFrame], x: str, y: str, path: str | os.PathLike, title: str, ylabel: str | None = None) -> None:
    """One line per run of metric `y` against `x`."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4))
    for label, df in runs.items():
        d = df.dropna(subset=[y])
        ax.plot(d[x], d[y], marker="o", ms=3, label=label)
    ax.set_xlabel(x.replace("_", " "))
    ax.set_ylabel(ylabel or y.replace("_", " "))
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    _save(fig, path)


def predicted_curves(curves_: Sequence[Any], path: str | os.PathLike) -> None:
    """Predicted cumulative target change per dataset, with the positive-effect part dashed."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4))
    for c in curves_:
        s = c.steps
        line = ax.plot(s["step"], s["cumulative"], label=f"{c.name}: positive + noise")[0]
        ax.plot(s["step"], s["positive"].cumsum(), ls="--", color=line.get_color(), lw=0.9, label=f"{c.name}: positive only")
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xlabel("optimiser step")
    sign = "drop of the target loss (nats)" if curves_ and curves_[0].start_value is not None else "target change"
    ax.set_ylabel(f"predicted cumulative {sign}")
    ax.set_title("Predicted SFT growth of the target, per dataset")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    _save(fig, path)


def predicted_vs_actual(df: pd.DataFrame, path: str | os.PathLike) -> None:
    """Actual target loss of real runs (solid, markers) against the predicted curve (dashed), per dataset."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4))
    for name, g in df.groupby("dataset", sort=False):
        line = ax.plot(g["step"], g["actual"], marker="o", ms=3, label=f"{name}: actual")[0]
        ax.plot(g["step"], g["predicted"], ls="--", color=line.get_color(), label=f"{name}: predicted")
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("target loss (nats/token)")
    ax.set_title("Predicted vs actual target loss during SFT")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    _save(fig, path)


def selection_bars(summary: pd.DataFrame, path: str | os.PathLike) -> None:
    """Final target loss (and accuracy) per selection group: bars at the group mean, one dot per run."""
    plt = _plt()
    metrics = [m for m in ("target_loss_end", "accuracy_end") if m in summary]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.8), squeeze=False)
    groups = list(dict.fromkeys(summary["group"]))
    for ax, m in zip(axes[0], metrics):
        means = [summary.loc[summary["group"] == g, m].mean() for g in groups]
        ax.bar(range(len(groups)), means, color="lightsteelblue")
        for i, g in enumerate(groups):
            v = summary.loc[summary["group"] == g, m]
            ax.scatter([i] * len(v), v, color="k", s=12, zorder=3)
        ax.set_xticks(range(len(groups)), groups)
        ax.set_xlabel("selection (k examples)")
        ax.set_ylabel("held-out target loss (nats/token)" if m == "target_loss_end" else "greedy accuracy")
        ax.set_title("after fine-tuning" + (": lower is better" if m == "target_loss_end" else ""))
    fig.suptitle("Top-k by sample effect vs random-k vs bottom-k")
    _save(fig, path)
