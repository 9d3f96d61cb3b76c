"""Figures in the cases that used to mislead: an impossible predicted drop, a metric stuck at zero, tiny lrs, few steps."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.ticker import MaxNLocator

from sample_effect.plots import figures as F
from sample_effect.validation.linearization import LinearizationResult, plot_linearization

NAMES = ["top-16", "random-16 (seed 0)", "random-16 (seed 1)", "bottom-16"]


def demo_summary(predicted=(804.0, 3.2, 2.7, -0.8)) -> pd.DataFrame:
    """The demo's `_summary` table, with the reported 804-nats prediction against an actual 5.5 from a 6.1 start."""
    return pd.DataFrame({
        "selection": NAMES, "target_loss_start": 6.1, "target_loss_end": [0.6, 1.9, 2.2, 3.4],
        "predicted_drop": list(predicted), "predicted_drop_step1": [0.0213, 0.0121, 0.0107, -0.0031],
        "actual_drop": [5.5, 4.2, 3.9, 2.7],
    })


def test_clip_to_start_caps_only_drops_beyond_the_start_loss():
    shown, clipped = F.clip_to_start([804.0, 3.2, 6.1, -0.8, np.nan, 7.0], [6.1, 6.1, 6.1, 6.1, 6.1, np.nan])
    assert clipped.tolist() == [True, False, False, False, False, False]
    assert shown[0] == pytest.approx(6.1) and shown[1] == 3.2 and shown[3] == -0.8 and shown[5] == 7.0
    assert np.isnan(shown[4])
    same, none = F.clip_to_start([804.0], None)
    assert same.tolist() == [804.0] and not none.any()
    shown, clipped = F.clip_to_start([10.0, 1.0], 6.1)  # one start for all runs
    assert clipped.tolist() == [True, False] and shown.tolist() == [6.1, 1.0]


def test_predicted_vs_actual_bars_caps_and_annotates(tmp_path, monkeypatch):
    drawn = {}
    real = F.save_figure
    monkeypatch.setattr(F, "save_figure", lambda fig, path: (drawn.setdefault("fig", fig), real(fig, path))[1])
    F.predicted_vs_actual_bars(demo_summary(), tmp_path / "pva.png")
    assert (tmp_path / "pva.png").stat().st_size > 0
    fig = drawn["fig"]
    whole, step1, ranks = fig.axes
    assert whole.get_ylim()[1] < 20  # the 804 is not drawn to scale next to the 5.5
    heights = [p.get_height() for p in whole.patches]
    assert max(heights) == pytest.approx(6.1) and 804.0 not in heights
    assert any(p.get_hatch() for p in whole.patches)
    notes = [t.get_text() for t in whole.texts]
    assert any("linear regime exceeded" in t.replace("\n", " ") and "804" in t for t in notes)
    assert "step 1" in step1.get_ylabel() and "order" in ranks.get_title()


def test_predicted_vs_actual_bars_without_step1_or_clipping(tmp_path):
    s = demo_summary((3.0, 2.0, 1.5, 0.5)).drop(columns=["predicted_drop_step1"])
    F.predicted_vs_actual_bars(s, tmp_path / "pva.png")
    assert (tmp_path / "pva.png").stat().st_size > 0


def _runs(value=0.0):
    steps = np.arange(0, 61, 4)
    return {n: pd.DataFrame({"step": steps, "eval_accuracy": value, "eval_loss": 6.0 - 0.05 * steps}) for n in NAMES}


def test_constant_helpers():
    assert F.constant_value([0.0, 0.0, np.nan]) == 0.0
    assert F.constant_value([0.0, 0.5]) is None and F.constant_value([np.nan]) is None
    assert F.constant_ylim(0.0, True) == (-0.03, 1.03)
    lo, hi = F.constant_ylim(2.0, False)
    assert lo < 2.0 < hi


def test_all_zero_accuracy_curves_get_the_unit_range_and_a_note(tmp_path, monkeypatch):
    drawn = {}
    real = F.save_figure
    monkeypatch.setattr(F, "save_figure", lambda fig, path: (drawn.setdefault("fig", fig), real(fig, path))[1])
    F.curves(_runs(0.0), "step", "eval_accuracy", tmp_path / "acc.png", "Greedy test accuracy", "accuracy")
    ax = drawn["fig"].axes[0]
    lo, hi = ax.get_ylim()
    assert lo <= 0.0 and hi >= 1.0
    assert any("all 4 runs at 0.000" in t.get_text() for t in ax.texts)
    lines = ax.get_lines()
    assert len({ln.get_marker() for ln in lines}) == 4 and len({ln.get_markersize() for ln in lines}) == 4
    assert isinstance(ax.xaxis.get_major_locator(), MaxNLocator)
    assert all(float(t).is_integer() for t in ax.get_xticks())


def test_moving_curves_still_draw(tmp_path):
    F.curves(_runs(0.0), "step", "eval_loss", tmp_path / "loss.png", "loss")
    assert (tmp_path / "loss.png").stat().st_size > 0


def _grab(monkeypatch):
    drawn = {}
    real = F.save_figure
    monkeypatch.setattr(F, "save_figure", lambda fig, path: (drawn.setdefault("fig", fig), real(fig, path))[1])
    return drawn


def test_predict_sft_step_ticks_and_histogram_counts_are_integers(tmp_path, monkeypatch):
    steps = pd.DataFrame({"step": np.arange(1, 6), "positive": 0.05, "noise": -0.01})
    steps["cumulative"] = (steps["positive"] + steps["noise"]).cumsum()
    steps["target"] = 6.1 - steps["cumulative"]
    drawn = _grab(monkeypatch)
    F.predicted_curves_table(steps.assign(dataset="top-16"), tmp_path / "p.png")
    ax = drawn.pop("fig").axes[0]
    assert all(float(t).is_integer() for t in ax.get_xticks())
    F.effects_ranked(pd.DataFrame({"effect": np.random.default_rng(0).normal(size=7)}), tmp_path / "e.png")
    hist = drawn.pop("fig").axes[1]
    assert all(float(t).is_integer() for t in hist.get_yticks())


def test_power_of_ten_and_small_lr_linearisation_figure(tmp_path, monkeypatch):
    assert F.power_of_ten([3e-6, -1e-7]) == -6 and F.power_of_ten([0.5, 2.0]) == 0 and F.power_of_ten([]) == 0
    rng = np.random.default_rng(0)
    rows = pd.DataFrame([{"lr": lr, "id": f"x{i}", "effect": e, "predicted": lr * e, "actual": lr * e * 1.01}
                         for lr in (1e-6, 1e-4) for i, e in enumerate(rng.normal(3, 2, 12))])
    summary = pd.DataFrame([{"lr": lr, "pearson": 0.99, "spearman": 0.98, "n": 12} for lr in (1e-6, 1e-4)])
    drawn = _grab(monkeypatch)
    plot_linearization(LinearizationResult(rows, summary), str(tmp_path / "lin.png"))
    ax = drawn["fig"].axes[0]
    assert "10^{-6}" in ax.get_xlabel()
    assert len(ax.get_xticks()) <= 6 and not ax.xaxis.get_offset_text().get_text()
    assert all(len(t.get_text()) <= 6 for t in ax.get_xticklabels())


def test_step1_prediction_beyond_the_start_is_capped_too(tmp_path, monkeypatch):
    """A one-step run from the demo: the step-1 prediction (13.8) already exceeds the start loss (6.1)."""
    s = demo_summary((13.8, 12.0, 5.8, 3.2)).assign(predicted_drop_step1=[13.8, 12.0, 5.8, 3.2],
                                                     actual_drop=[0.79, 1.21, -1.50, 0.27])
    drawn = _grab(monkeypatch)
    F.predicted_vs_actual_bars(s, tmp_path / "pva.png")
    whole, step1, _ = drawn["fig"].axes
    for ax in (whole, step1):
        assert max(p.get_height() for p in ax.patches) == pytest.approx(6.1)
        assert sum("linear regime" in t.get_text() for t in ax.texts) == 2
    assert "exceeded" in step1.get_title() and "2 of 4" in drawn["fig"]._suptitle.get_text()


def test_rl_growth_figure_keeps_accuracy_in_range_and_labels_what_leaves_it(tmp_path, monkeypatch):
    """A linear prediction of +3.0 held-out accuracy is drawn at 1.0 with its raw value labelled (the demo's Q2d case)."""
    import pandas as pd

    import sample_effect.plots.rl as rl_plots

    seen = {}

    def keep(fig, path):
        seen["ax"] = fig.axes[0]
        seen["texts"] = [t.get_text() for t in fig.axes[0].texts]

    monkeypatch.setattr(rl_plots, "save_figure", keep)
    df = pd.DataFrame({"model": ["a"] * 3, "run": [0] * 3, "step": [0, 4, 8], "actual": [0.4, 0.45, 0.5],
                       "predicted": [0.4, 1.7, 3.0], "predicted_lo": [0.4, -0.2, -0.5], "predicted_hi": [0.4, 2.5, 4.4],
                       "zero_variance_groups": [1, 1, 1]})
    rl_plots.rl_start_curves(df, [{"name": "a", "predicted_zero_variance_fraction": 0.5}], tmp_path / "g.png")
    for line in seen["ax"].get_lines():
        assert all(-1e-9 <= float(v) <= 1 + 1e-9 for v in line.get_ydata()), line.get_ydata()
    assert any("+3.00 (off scale)" in t for t in seen["texts"])
    clipped, off = rl_plots.clamp_to_range([0.2, 1.4, -0.1])
    assert clipped.tolist() == [0.2, 1.0, 0.0] and off == [(1, 1.4), (2, -0.1)]
