"""The ordering verdict over RL starts (`validation.rl_starts`)."""

from __future__ import annotations

import pytest

from sample_effect.errors import SampleEffectError
from sample_effect.validation.rl_starts import ordering_verdict, verdict_text


def start(name, pred, ci, actual):
    return {"name": name, "predicted_total_change": pred, "predicted_total_change_ci95": ci, "actual_total_change": actual}


def test_matching_order_with_separated_intervals():
    v = ordering_verdict([start("a", 0.2, [0.1, 0.3], 0.15), start("b", 0.05, [0.0, 0.08], 0.02)])
    assert v["predicted_order"] == ["a", "b"] and v["actual_order"] == ["a", "b"] and v["matched"]
    (pair,) = v["pairs"]
    assert pair["agree"] and pair["resolved"] and pair["predicted_difference"] == pytest.approx(0.15)
    assert "matched (1 of 1 pairs agree in sign)" in verdict_text(v)


def test_reversed_order_is_reported_with_overlap():
    v = ordering_verdict([start("a", 0.2, [0.0, 0.4], 0.01), start("b", 0.1, [0.05, 0.15], 0.1),
                          start("c", -0.1, [-0.2, 0.0], -0.05)])
    assert v["predicted_order"] == ["a", "b", "c"] and v["actual_order"] == ["b", "a", "c"]
    assert not v["matched"] and v["pairs_agreeing"] == 2
    text = verdict_text(v)
    assert "NOT matched (2 of 3" in text and "a vs b: predicted +0.100, actual -0.090 (predicted intervals overlap)" in text


def test_ties_order_nothing():
    """All groups zero-variance: every prediction is exactly 0, which must not read as a matched order."""
    v = ordering_verdict([start("a", 0.0, [0.0, 0.0], 0.0), start("b", 0.0, [0.0, 0.0], 0.0)])
    assert not v["matched"] and v["ties"] == 1 and "1 tied, which orders nothing" in verdict_text(v)


def test_one_start_has_no_ordering():
    with pytest.raises(SampleEffectError, match="at least two"):
        ordering_verdict([start("a", 0.1, [0, 0.2], 0.1)])
