"""Figures, written as PNG (or SVG by extension) with titles, labelled axes and legends."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd


def pyplot():  # type: ignore[no-untyped-def]
    """matplotlib.pyplot on the Agg back end, imported on first use (plotting needs no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | os.PathLike) -> None:  # type: ignore[no-untyped-def]
    """Write a figure atomically (PNG, or the format its extension names) and close it."""
    from sample_effect.io import atomic_path

    fig.tight_layout()
    suffix = os.path.splitext(str(path))[1].lstrip(".") or "png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=130, format=suffix)
    pyplot().close(fig)


def integer_ticks(axis: Any) -> None:
    """Put major ticks on whole numbers only (optimiser steps, counts)."""
    from matplotlib.ticker import MaxNLocator

    axis.set_major_locator(MaxNLocator(integer=True))


def power_of_ten(values: Sequence[float], low: int = -2, high: int = 3) -> int:
    """The exponent k to write values as v * 10^k on an axis: that of the largest |value|, 0 when it lies in [1e-2, 1e4)."""
    import numpy as np

    v = np.abs(np.asarray(values, dtype=float))
    v = v[np.isfinite(v) & (v > 0)]
    if v.size == 0:
        return 0
    k = int(np.floor(np.log10(v.max())))
    return 0 if low <= k <= high else k


def plain_ticks(axis: Any, nbins: int = 5) -> None:
    """At most `nbins` ticks with plain labels: no offset text or exponent that could run into the label."""
    from matplotlib.ticker import MaxNLocator, ScalarFormatter

    axis.set_major_locator(MaxNLocator(nbins=nbins))
    fmt = ScalarFormatter(useOffset=False)
    fmt.set_scientific(False)
    axis.set_major_formatter(fmt)


def effects_by_group(table: pd.DataFrame, group: str, path: str | os.PathLike, title: str = "Sample effect by group") -> None:
    """Box plot with points: the distribution of sample effects per group (e.g. response style)."""
    plt = pyplot()
    groups = list(table.groupby(group)["effect"].mean().sort_values(ascending=False).index)
    fig, ax = plt.subplots(figsize=(6.4, 4))
    data = [table.loc[table[group] == g, "effect"].to_numpy() for g in groups]
    ax.boxplot(data, showfliers=False)
    long_labels = sum(len(str(g)) for g in groups) > 60  # rotate rather than let neighbours overlap
    ax.set_xticks(range(1, len(groups) + 1), groups, rotation=30 if long_labels else 0, ha="right" if long_labels else "center")
    for i, d in enumerate(data, start=1):
        ax.scatter([i] * len(d), d, s=10, alpha=0.5)
    ax.axhline(0, color="grey", lw=0.8, ls="--")
    ax.set_xlabel(group)
    ax.set_ylabel("sample effect e(s) (target change per unit lr)")
    ax.set_title(title)
    save_figure(fig, path)


MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
LINESTYLES = ("-", "--", "-.", ":")


def constant_value(values: Sequence[float], rtol: float = 1e-9) -> float | None:
    """The common value when every finite value is the same (to rtol), else None (None too when there is none)."""
    import numpy as np

    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return None
    lo, hi = float(v.min()), float(v.max())
    return lo if hi - lo <= rtol * max(1.0, abs(lo), abs(hi)) else None


def constant_ylim(value: float, is_fraction: bool) -> tuple[float, float]:
    """A y range for a metric that never moves: the whole [0, 1] for a fraction (accuracy), else value +- a margin."""
    if is_fraction:
        return -0.03, 1.03
    margin = max(0.1 * abs(value), 0.05)
    return value - margin, value + margin


def curves(runs: Mapping[str, pd.DataFrame], x: str, y: str, path: str | os.PathLike, title: str, ylabel: str | None = None,
           join: bool = True) -> None:
    """One line per run of metric `y` against `x`; a metric that never moves gets a sensible y range and a note.

    Each run has its own marker and line style; when every value is the same the markers shrink
    from run to run (hollow) so that lines drawn over each other all stay visible. `join=False`
    draws the points only (e.g. two measurements, before and after, which are not a trajectory).
    """
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4))
    data = {label: df.dropna(subset=[y]) for label, df in runs.items()}
    const = constant_value([v for d in data.values() for v in d[y]])
    for i, (label, d) in enumerate(data.items()):
        ms = max(3.0, 9.0 - 2.0 * i) if const is not None else 4.0
        ax.plot(d[x], d[y], marker=MARKERS[i % len(MARKERS)], ms=ms, ls=LINESTYLES[i % len(LINESTYLES)] if join else "none",
                mfc="none" if const is not None else None, mew=1.2, label=label)
    is_fraction = "accuracy" in y.lower() or "accuracy" in (ylabel or "").lower()
    if const is not None:
        ax.set_ylim(*constant_ylim(const, is_fraction))
        n = len(data)
        note = (f"all {n} runs at {const:.3f} at every {x.replace('_', ' ')}" if n > 1
                else f"constant at {const:.3f}") + ("\n(lines drawn over each other)" if n > 1 else "")
        ax.text(0.5, 0.5, note, transform=ax.transAxes, ha="center", va="center", fontsize=10,
                bbox={"boxstyle": "round", "fc": "lightyellow", "ec": "0.6"})
    elif is_fraction:
        lo, hi = ax.get_ylim()
        ax.set_ylim(max(lo, -0.03), min(hi, 1.03))
    if x in ("step", "optimiser_step", "global_step"):
        integer_ticks(ax.xaxis)
    ax.set_xlabel(x.replace("_", " "))
    ax.set_ylabel(ylabel or y.replace("_", " "))
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    save_figure(fig, path)


def predicted_curves(curves_: Sequence[Any], path: str | os.PathLike) -> None:
    """Predicted cumulative target change per dataset, with the positive-effect part dashed."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4))
    for c in curves_:
        s = c.steps
        line = ax.plot(s["step"], s["cumulative"], label=f"{c.name}: positive + noise")[0]
        ax.plot(s["step"], s["positive"].cumsum(), ls="--", color=line.get_color(), lw=0.9, label=f"{c.name}: positive only")
    ax.axhline(0, color="grey", lw=0.8)
    integer_ticks(ax.xaxis)
    ax.set_xlabel("optimiser step")
    sign = "drop of the target loss (nats)" if curves_ and curves_[0].start_value is not None else "target change"
    ax.set_ylabel(f"predicted cumulative {sign}")
    ax.set_title("Predicted SFT growth of the target, per dataset")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    save_figure(fig, path)


def predicted_vs_actual(df: pd.DataFrame, path: str | os.PathLike, title: str = "Predicted vs actual target loss during SFT") -> None:
    """Actual target loss of real runs (solid, markers) against the predicted curve (dashed), per dataset."""
    plt = pyplot()
    many = df["dataset"].nunique() > 2
    fig, ax = plt.subplots(figsize=(9.2 if many else 6.4, 4))
    for name, g in df.groupby("dataset", sort=False):
        line = ax.plot(g["step"], g["actual"], marker="o", ms=3, label=f"{name}: actual")[0]
        ax.plot(g["step"], g["predicted"], ls="--", color=line.get_color(), label=f"{name}: predicted")
        if "predicted_second_order" in g and g["predicted_second_order"].notna().any():
            ax.plot(g["step"], g["predicted_second_order"], ls=":", color=line.get_color(),
                    label=f"{name}: predicted, with 2nd order")
    integer_ticks(ax.xaxis)
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("target loss (nats/token)")
    ax.set_title(title)
    if many:  # beside the axes, so that it hides no curve
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    else:
        ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    save_figure(fig, path)


def selection_bars(summary: pd.DataFrame, path: str | os.PathLike) -> None:
    """Final target loss (and accuracy) per selection group: bars at the group mean, one dot per run."""
    plt = pyplot()
    metrics = [m for m in ("target_loss_end", "accuracy_end") if m in summary]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.8), squeeze=False)
    groups = list(dict.fromkeys(summary["group"]))
    for ax, m in zip(axes[0], metrics):
        means = [summary.loc[summary["group"] == g, m].mean() for g in groups]
        ax.bar(range(len(groups)), means, color="lightsteelblue")
        for i, g in enumerate(groups):
            v = summary.loc[summary["group"] == g, m]
            ax.scatter([i] * len(v), v, color="k", s=12, zorder=3)
        const = constant_value(summary[m])
        if m == "accuracy_end" and const is not None:  # e.g. all zero: show it on the whole [0, 1], said in words
            ax.set_ylim(*constant_ylim(const, True))
            ax.text(0.5, 0.5, f"all {len(summary)} runs at {const:.3f}", transform=ax.transAxes, ha="center",
                    va="center", bbox={"boxstyle": "round", "fc": "lightyellow", "ec": "0.6"})
        ax.set_xticks(range(len(groups)), groups)
        ax.set_xlabel("selection (k examples)")
        ax.set_ylabel("held-out target loss (nats/token)" if m == "target_loss_end" else "greedy accuracy")
        ax.set_title("after fine-tuning" + (": lower is better" if m == "target_loss_end" else ""))
    fig.suptitle("Top-k by sample effect vs random-k vs bottom-k")
    save_figure(fig, path)


def effects_ranked(table: pd.DataFrame, path: str | os.PathLike, title: str = "Sample effects, ranked") -> None:
    """Effect against rank (left) and the histogram of effects (right), from a `rank` table."""
    import numpy as np

    plt = pyplot()
    eff = pd.to_numeric(table["effect"], errors="coerce").to_numpy(dtype=float)
    finite = eff[np.isfinite(eff)]
    order = np.sort(finite)[::-1]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9.6, 3.8))
    ax1.plot(np.arange(1, len(order) + 1), order, marker="o" if len(order) <= 60 else None, ms=3)
    ax1.axhline(0, color="grey", lw=0.8, ls="--")
    ax1.set_xlabel("rank (1 = most helpful)")
    ax1.set_ylabel("sample effect e(s) (target change per unit lr)")
    ax1.set_title(f"{len(order)} examples by rank")
    ax1.grid(alpha=0.3)
    ax2.hist(order, bins=max(5, min(50, int(np.sqrt(max(1, len(order)))) * 2)), color="lightsteelblue", edgecolor="k", lw=0.5)
    ax2.axvline(0, color="grey", lw=0.8, ls="--")
    ax2.set_xlabel("sample effect e(s)")
    ax2.set_ylabel("examples")
    integer_ticks(ax2.yaxis)
    pos = int((order > 0).sum())
    ax2.set_title(f"{pos} of {len(order)} positive" + (f"; {len(eff) - len(order)} non-finite left out" if len(eff) > len(order) else ""))
    fig.suptitle(title)
    save_figure(fig, path)


def predicted_curves_table(table: pd.DataFrame, path: str | os.PathLike, title: str = "Predicted SFT growth of the target, per dataset") -> None:
    """`predict-sft`'s CSV (curves_table): predicted cumulative change per dataset, the positive-effect part dashed."""
    import numpy as np

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4))
    loss_target = False
    for name, g in table.groupby("dataset", sort=False):
        g = g.sort_values("step")
        line = ax.plot(g["step"], g["cumulative"], label=f"{name}: positive + noise")[0]
        ax.plot(g["step"], g["positive"].cumsum(), ls="--", color=line.get_color(), lw=0.9, label=f"{name}: positive only")
        # a loss target's `target` column is start - cumulative; a direction's is the cumulative change itself
        loss_target = loss_target or not np.allclose(g["target"].to_numpy(float), g["cumulative"].to_numpy(float))
    ax.axhline(0, color="grey", lw=0.8)
    integer_ticks(ax.xaxis)
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("predicted cumulative " + ("drop of the target loss (nats)" if loss_target else "target change"))
    ax.set_title(title)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    save_figure(fig, path)


def rl_growth_bars(records: Sequence[Mapping[str, Any]], path: str | os.PathLike, title: str | None = None) -> None:
    """`predict-rl`'s records: predicted growth per GRPO step per model, bootstrap 95% interval as error bars,
    the zero-variance fraction of the prompt groups written over each bar."""
    import numpy as np

    plt = pyplot()
    labels = [str(r["model"]) for r in records]
    growth = np.array([np.nan if r.get("growth_rate") is None else float(r["growth_rate"]) for r in records])
    lo, hi = [], []
    for r, g in zip(records, growth):
        ci = r.get("growth_rate_ci95") or [None, None]
        ok = ci[0] is not None and ci[1] is not None and np.isfinite(g)
        lo.append(max(0.0, g - float(ci[0])) if ok else 0.0)
        hi.append(max(0.0, float(ci[1]) - g) if ok else 0.0)
    x = np.arange(len(records))
    fig, ax = plt.subplots(figsize=(max(4.8, 1.3 * len(records) + 2.5), 4.2))
    ax.bar(x, np.nan_to_num(growth), yerr=[lo, hi], capsize=5, color="lightsteelblue", edgecolor="k", lw=0.6,
           label="growth rate (bootstrap 95% CI over prompts)")
    ax.axhline(0, color="grey", lw=0.8)
    top = np.nanmax(np.abs(np.concatenate([growth + np.array(hi), growth - np.array(lo)]))) if np.isfinite(growth).any() else 1.0
    for i, r in enumerate(records):
        zf = r.get("zero_variance_fraction")
        zg, n = r.get("zero_variance_groups"), r.get("n_prompts")
        text = "zero-var n/a" if zf is None else f"zero-var {float(zf):.0%}" + (f"\n({zg}/{n} groups)" if zg is not None and n else "")
        if not np.isfinite(growth[i]):
            text = "growth n/a\n" + text
        y = np.nan_to_num(growth[i]) + (hi[i] if np.nan_to_num(growth[i]) >= 0 else -lo[i])
        ax.annotate(text, (i, y), xytext=(0, 4 if y >= 0 else -4), textcoords="offset points", ha="center",
                    va="bottom" if y >= 0 else "top", fontsize=8)
    ax.set_ylim(min(ax.get_ylim()[0], -0.25 * top), max(ax.get_ylim()[1], 1.35 * top) if top > 0 else 1)
    ax.set_xticks(x, labels, rotation=20 if max(map(len, labels), default=0) > 12 else 0,
                  ha="right" if max(map(len, labels), default=0) > 12 else "center")
    ax.set_xlabel("policy checkpoint")
    target = records[0].get("target") if records else None
    ax.set_ylabel("predicted target change per GRPO step")
    ax.set_title(title or "Predicted GRPO growth per step" + (f" toward '{target}'" if target else ""))
    ax.legend(fontsize=7, loc="upper right")
    ax.grid(alpha=0.3, axis="y")
    save_figure(fig, path)


def _cell_edges(values: Sequence[float], start_aligned: bool) -> Any:
    """Cell boundaries for pcolormesh: [v, next v) per value (start_aligned) or centred on each value."""
    import numpy as np

    v = np.asarray(values, dtype=float)
    if len(v) == 1:
        return np.array([v[0], v[0] + 1.0]) if start_aligned else np.array([v[0] - 0.5, v[0] + 0.5])
    if start_aligned:
        return np.append(v, v[-1] + np.min(np.diff(v)))
    mids = (v[:-1] + v[1:]) / 2
    return np.concatenate([[v[0] - (mids[0] - v[0])], mids, [v[-1] + (v[-1] - mids[-1])]])


def logprob_quantile_heatmap(
    pivot: pd.DataFrame, path: str | os.PathLike, q: float, bucket: int | None = None, title: str | None = None
) -> None:
    """Heatmap of `quantiles.quantile_pivot`: GRPO step on y, token position on x, colour the q-quantile log-prob."""
    import numpy as np

    plt = pyplot()
    z = np.ma.masked_invalid(pivot.to_numpy(dtype=float))
    steps, positions = list(pivot.index), list(pivot.columns)
    if bucket is None:
        bucket = int(np.min(np.diff(positions))) if len(positions) > 1 else 1
    fig, ax = plt.subplots(figsize=(min(12.0, max(6.4, 0.06 * len(positions) + 4)), min(9.0, max(3.6, 0.18 * len(steps) + 2))))
    cmap = plt.get_cmap("viridis").with_extremes(bad="0.88")
    mesh = ax.pcolormesh(_cell_edges(positions, True), _cell_edges(steps, False), z, cmap=cmap, shading="flat")
    ax.invert_yaxis()
    if len(steps) <= 20:
        ax.set_yticks(steps)
    cb = fig.colorbar(mesh, ax=ax)
    cb.set_label(f"{q:g}-quantile of token log-prob (nats)")
    ax.set_xlabel("token position in the completion (0-based" + (f", buckets of {bucket})" if bucket > 1 else ")"))
    ax.set_ylabel("GRPO step")
    ax.set_title(title or f"Rarest sampled tokens: {q:g}-quantile of token log-prob\nper GRPO step and position (grey: too few tokens)")
    save_figure(fig, path)


def logprob_quantile_curves(
    df: pd.DataFrame, path: str | os.PathLike, steps: Sequence[int] | None = None, q: float | None = None,
    title: str | None = None,
) -> None:
    """Quantile against token position, one line per step, from `quantiles.quantile_table`'s tidy table.

    `steps` None takes up to four steps spread from the first to the last."""
    import numpy as np

    plt = pyplot()
    have = sorted(df["step"].unique())
    if steps is None:
        steps = list(dict.fromkeys(have[round(i)] for i in np.linspace(0, len(have) - 1, min(4, len(have)))))
    fig, ax = plt.subplots(figsize=(6.4, 4))
    for s in steps:
        g = df[df["step"] == s].sort_values("position")
        ax.plot(g["position"], g["quantile"], marker="o" if len(g) <= 40 else None, ms=3, label=f"step {s}")
    qtext = f"{q:g}-quantile" if q is not None else "quantile"
    ax.set_xlabel("token position in the completion (0-based)")
    ax.set_ylabel(f"{qtext} of token log-prob (nats)")
    ax.set_title(title or f"Rarest sampled tokens by position: {qtext} of token log-prob")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    save_figure(fig, path)


def clip_to_start(predicted: Sequence[float], start: Sequence[float] | None) -> tuple[Any, Any]:
    """Predicted loss drops capped at the starting loss (no loss falls below 0) and a mask of the capped ones.

    A drop counts as capped when it exceeds a finite starting loss; a predicted rise (negative drop)
    and a missing start are left as they are.
    """
    import numpy as np

    pred = np.asarray(predicted, dtype=float)
    if start is None:
        return pred.copy(), np.zeros(pred.shape, dtype=bool)
    cap = np.broadcast_to(np.asarray(start, dtype=float), pred.shape)
    clipped = np.isfinite(cap) & np.isfinite(pred) & (pred > cap)
    return np.where(clipped, cap, pred), clipped


def _drop_bars(ax: Any, summary: pd.DataFrame, names: Sequence[str], predicted: str, actual: str | None) -> int:
    """Predicted drops (capped at the start loss, hatched and annotated where capped) beside the actual ones.

    The start loss (the largest possible drop) is drawn when it is within reach of the bars, so
    that small drops are not flattened by it. Returns how many predictions were capped.
    """
    import numpy as np

    x = np.arange(len(names))
    start = summary["target_loss_start"].to_numpy(float) if "target_loss_start" in summary else None
    raw = summary[predicted].to_numpy(float)
    shown, clipped = clip_to_start(raw, start)
    act = summary[actual].to_numpy(float) if actual else np.array([])
    w = 0.38 if actual else 0.6
    off = w / 2 if actual else 0.0
    ax.bar(x - off, shown, w, color="lightsteelblue", edgecolor="k", lw=0.6, label="predicted (first order)")
    if clipped.any():
        ax.bar(x[clipped] - off, shown[clipped], w, color="mistyrose", edgecolor="firebrick", hatch="//", lw=0.8,
               label="predicted, capped at the start loss")
    if actual:
        ax.bar(x + off, act, w, color="tab:blue", edgecolor="k", lw=0.6, label="actual")
    top = np.nanmax(np.abs(np.concatenate([shown, act]))) if len(shown) else np.nan
    if start is not None and np.isfinite(start).any() and (clipped.any() or top >= 0.5 * np.nanmin(start)):
        ax.hlines(start, x - 0.45, x + 0.45, color="k", lw=1.5, zorder=3, label="start loss (largest possible drop)")
        top = max(top, float(np.nanmax(start)))
    crowded = len(x) > 4  # many bars: the figure's title says "linear regime exceeded"; each bar keeps its raw value
    for i in np.flatnonzero(clipped):
        text = f"pred\n{raw[i]:.3g}" if crowded else f"linear regime\nexceeded\n(pred {raw[i]:.3g})"
        ax.annotate(text, (x[i] - off, shown[i]), xytext=(0, 4),
                    textcoords="offset points", ha="center", va="bottom", fontsize=7, color="firebrick")
    if np.isfinite(top) and top > 0:
        ax.set_ylim(min(-0.05 * top, ax.get_ylim()[0]), top * 1.6)  # headroom for the legend and the notes
    ax.axhline(0, color="grey", lw=0.8)
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 4), useMathText=True)
    ax.legend(fontsize=6.5, loc="upper right", ncol=2)
    return int(clipped.sum())


def _rank_panel(ax: Any, summary: pd.DataFrame, names: Sequence[str]) -> None:
    """Do the predictions order the runs right? Rank by predicted whole-run drop against rank by actual drop."""
    import numpy as np

    pred_rank = summary["predicted_drop"].rank(ascending=False, method="average").to_numpy(float)
    act_rank = summary["actual_drop"].rank(ascending=False, method="average").to_numpy(float)
    n = len(names)
    ax.plot([0.5, n + 0.5], [0.5, n + 0.5], color="grey", ls="--", lw=0.8, label="same order")
    ax.scatter(pred_rank, act_rank, s=40, color="tab:blue", zorder=3)
    for i, name in enumerate(names):
        ax.annotate(str(name), (pred_rank[i], act_rank[i]), xytext=(5, 3), textcoords="offset points", fontsize=7)
    ax.set_xlim(0.5, n + 0.5)
    ax.set_ylim(0.5, n + 0.5)
    ax.set_aspect("equal", adjustable="box")
    integer_ticks(ax.xaxis)
    integer_ticks(ax.yaxis)
    ax.set_xlabel("rank by predicted drop (1 = largest)")
    ax.set_ylabel("rank by actual drop")
    rho = float(np.corrcoef(pred_rank, act_rank)[0, 1]) if n >= 3 else float("nan")
    ax.set_title(f"order of the runs: Spearman {rho:.2f}" if np.isfinite(rho) else "order of the runs")
    ax.legend(fontsize=7, loc="lower right")


def predicted_vs_actual_bars(summary: pd.DataFrame, path: str | os.PathLike, label: str = "selection") -> None:
    """Per run: predicted against actual drop of the target loss, the step-1 prediction, and the order of the runs.

    A first-order prediction over many large steps can overshoot the loss itself (a drop larger than
    the starting loss is impossible): such bars are capped at the start loss, hatched, and marked
    'linear regime exceeded' with the raw prediction. The step-1 panel shows the prediction where the
    linear picture is most likely to hold (capped the same way); the rank panel whether the
    predictions order the runs as they came out.
    """

    plt = pyplot()
    names = [str(n) for n in summary[label]]
    step1 = "predicted_drop_step1" in summary and summary["predicted_drop_step1"].notna().any()
    panels = 3 if step1 else 2
    fig, axes = plt.subplots(1, panels, figsize=(4.9 * panels, 4.4), squeeze=False)
    ax0 = axes[0][0]
    n_clipped = _drop_bars(ax0, summary, names, "predicted_drop", "actual_drop")
    ax0.set_ylabel("drop of the target loss (nats/token)")
    ax0.set_title("whole run: predicted vs actual")
    if step1:
        ax1 = axes[0][1]
        have_actual = "actual_drop_step1" in summary and summary["actual_drop_step1"].notna().any()
        capped1 = _drop_bars(ax1, summary, names, "predicted_drop_step1", "actual_drop_step1" if have_actual else None)
        ax1.set_ylabel("drop of the target loss over step 1 (nats/token)")
        ax1.set_title("first step only" + (": linear regime exceeded already" if capped1 else ""))
    _rank_panel(axes[0][-1], summary, names)
    for ax in axes[0][:-1]:
        ax.set_xticks(range(len(names)), names, rotation=20, ha="right", fontsize=8)
        ax.grid(alpha=0.3, axis="y")
    ax0.set_xlabel(label)
    note = f"{n_clipped} of {len(names)} whole-run predictions exceed the start loss (linear regime exceeded)"
    fig.suptitle(f"Drop of the held-out target loss, per {label}" + (f"\n{note}" if n_clipped else ""))
    save_figure(fig, path)


def lds_figure(rows: pd.DataFrame, table: dict, path: str | os.PathLike) -> None:
    """One panel per method: its predicted drop of the mean target loss per subset against the actual drop."""
    plt = pyplot()
    methods = list(table)
    fig, axes = plt.subplots(1, len(methods), figsize=(3.4 * len(methods), 3.2), squeeze=False)
    for ax, m in zip(axes[0], methods):
        ax.scatter(rows[f"predicted_{m}"], rows["actual_mean_drop"], s=12)
        v = table[m]
        lo, hi = v["lds_mean_target_ci95"]
        per = "" if v["lds"] is None else f"LDS {v['lds']:+.2f} [{v['lds_ci95'][0]:+.2f}, {v['lds_ci95'][1]:+.2f}]\n"
        ax.set_title(f"{m}\n{per}mean target {v['lds_mean_target']:+.2f} [{lo:+.2f}, {hi:+.2f}]", fontsize=8)
        ax.set_xlabel("predicted drop (summed effects)", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0][0].set_ylabel("actual drop of the mean target loss", fontsize=8)
    fig.suptitle("Linear datamodeling score: one point per random subset", fontsize=9)
    save_figure(fig, path)
