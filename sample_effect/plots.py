"""Figures, written as PNG (or SVG by extension) with titles, labelled axes and legends."""

from __future__ import annotations

import os
from collections.abc import Mapping

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
