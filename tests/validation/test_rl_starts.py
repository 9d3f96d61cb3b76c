"""The ordering verdict over RL starts (`validation.rl_starts`): ties are ties, unresolved pairs are named."""

from __future__ import annotations

import pytest

from sample_effect.errors import SampleEffectError
from sample_effect.validation.rl_starts import ordering_verdict, verdict_text


def start(name, pred, ci, actual, se=None):
    return {"name": name, "predicted_total_change": pred, "predicted_total_change_ci95": ci, "actual_total_change": actual,
            "actual_total_change_se": se}


def test_matching_order_with_separated_intervals_and_error_bars():
    v = ordering_verdict([start("a", 0.2, [0.1, 0.3], 0.15, 0.01), start("b", 0.05, [0.0, 0.08], 0.02, 0.01)])
    assert v["predicted_order"] == ["a", "b"] and v["actual_order"] == ["a", "b"] and v["matched"]
    (pair,) = v["pairs"]
    assert pair["agree"] and pair["resolved"] and pair["predicted_difference"] == pytest.approx(0.15)
    assert v["pairs_resolved"] == 1 and v["pairs_agree_resolved"] == 1
    text = verdict_text(v)
    assert "matched (1 of 1 untied pairs agree in sign)" in text and "1 of 1 pairs are resolved" in text


def test_one_run_per_start_resolves_nothing():
    """Without an error bar on the actual side, a sign agreement is reported but no pair counts as resolved."""
    v = ordering_verdict([start("a", 0.2, [0.1, 0.3], 0.15), start("b", 0.05, [0.0, 0.08], 0.02)])
    assert v["pairs_agreeing"] == 1 and v["pairs_resolved"] == 0 and not v["has_error_bars"]
    assert "No pair is resolved" in verdict_text(v) and "(unresolved)" in verdict_text(v)


def test_a_gap_within_its_error_bar_is_unresolved():
    v = ordering_verdict([start("a", 0.2, [0.1, 0.3], 0.15, 0.05), start("b", 0.05, [0.0, 0.08], 0.10, 0.05)])
    assert v["pairs"][0]["agree"] and not v["pairs"][0]["resolved"] and v["pairs_resolved"] == 0


def test_reversed_order_is_reported_with_overlap():
    v = ordering_verdict([start("a", 0.2, [0.0, 0.4], 0.01), start("b", 0.1, [0.05, 0.15], 0.1),
                          start("c", -0.1, [-0.2, 0.0], -0.05)])
    assert v["predicted_order"] == ["a", "b", "c"] and v["actual_order"] == ["b", "a", "c"]
    assert not v["matched"] and v["pairs_agreeing"] == 2
    text = verdict_text(v)
    assert "NOT matched (2 of 3" in text and "a vs b: predicted +0.100, actual -0.090 (unresolved)" in text


def test_ties_order_nothing():
    """All groups zero-variance: every prediction is exactly 0, which must not read as a matched order."""
    v = ordering_verdict([start("a", 0.0, [0.0, 0.0], 0.0), start("b", 0.0, [0.0, 0.0], 0.0)])
    assert not v["matched"] and v["ties"] == 1 and "1 tied, which orders nothing" in verdict_text(v)


def test_a_float_rounding_difference_is_a_tie_not_an_agreement():
    """Q2d seed 0: long-cot and re-distilled both changed by -3/48, computed along two paths (a 4e-17 difference)."""
    a = 4 / 48 - 7 / 48  # long-cot: 7 of 48 answers right at step 0, 4 at the end
    b = 22 / 48 - 25 / 48  # re-distilled: 25, then 22
    assert a != b and abs(a - b) < 1e-16  # the two floats differ by rounding only
    v = ordering_verdict([start("long", 0.143, [0.015, 0.270], a), start("re", 0.007, [-0.066, 0.081], b)])
    assert v["ties"] == 1 and v["pairs_agreeing"] == 0 and v["pairs"][0]["tie"] and not v["matched"]


def test_one_start_has_no_ordering():
    with pytest.raises(SampleEffectError, match="at least two"):
        ordering_verdict([start("a", 0.1, [0, 0.2], 0.1)])
