"""Judging predictors of RL growth (`validation.rl_verdict`) and the target-noise interval (`rl_predictors`)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sample_effect.errors import SampleEffectError
from sample_effect.validation.rl_predictors import combined_se
from sample_effect.validation.rl_verdict import (
    judge_predictor,
    pair_verdicts,
    spearman,
    verdict_markdown,
)


def test_an_oracle_predictor_scores_spearman_one_and_resolves_every_well_separated_pair():
    runs = [[0.10, 0.11, 0.09, 0.10], [0.30, 0.31, 0.29, 0.30], [0.50, 0.52, 0.48, 0.50]]
    truth = [float(np.mean(r)) for r in runs]
    v = judge_predictor(["a", "b", "c"], truth, [0.0, 0.0, 0.0], runs, n_boot=500)
    assert v["spearman"] == pytest.approx(1.0) and v["spearman_ci95"] == pytest.approx([1.0, 1.0])
    assert v["pairs"] == 3 and v["pairs_resolved"] == 3 and v["pairs_agree"] == 3 and v["ties"] == 0
    reverse = judge_predictor(["a", "b", "c"], [-x for x in truth], [0.0] * 3, runs, n_boot=500)
    assert reverse["spearman"] == pytest.approx(-1.0) and reverse["pairs_agree"] == 0 and reverse["pairs_resolved"] == 3


def test_noisy_measurements_leave_pairs_unresolved_and_widen_the_interval():
    runs = [[0.0, 0.2, -0.2, 0.1], [0.05, 0.25, -0.15, 0.0], [0.5, 0.6, 0.4, 0.5]]
    v = judge_predictor(["a", "b", "c"], [0.0, 0.1, 0.5], [0.01, 0.01, 0.01], runs, n_boot=1000)
    assert v["pairs_measured_resolved"] == 2  # a-b overlap; c stands apart from both
    ab = next(p for p in v["pair_verdicts"] if p["pair"] == "a vs b")
    assert ab["agree"] and not ab["resolved"] and not ab["measured_resolved"]
    lo, hi = v["spearman_ci95"]
    assert lo < v["spearman"] <= hi


def test_overlapping_predictor_intervals_do_not_resolve_a_pair():
    (p,) = pair_verdicts(["a", "b"], [0.2, 0.1], [0.04, 0.04], [0.5, 0.1], [0.01, 0.01])
    assert p["measured_resolved"] and not p["predictor_separates"] and not p["resolved"] and p["agree"]


def test_ties_are_neither_agreement_nor_disagreement():
    (p,) = pair_verdicts(["a", "b"], [0.3, 0.1], [0.0, 0.0], [4 / 48 - 7 / 48, 22 / 48 - 25 / 48], [0.0, 0.0])
    assert p["tie"] and p["agree"] is None and not p["resolved"]
    v = judge_predictor(["a", "b"], [0.2, 0.2], [0.0, 0.0], [[0.1, 0.2], [0.3, 0.4]], n_boot=200)
    assert v["ties"] == 1 and v["pairs_untied"] == 0 and v["pairs_agree_untied"] == 0 and math.isnan(v["spearman"])


def test_judge_checks_its_inputs():
    with pytest.raises(SampleEffectError, match="at least two"):
        judge_predictor(["a"], [0.1], [0.0], [[0.1, 0.2]])
    with pytest.raises(SampleEffectError, match="one predicted value"):
        judge_predictor(["a", "b"], [0.1], [0.0, 0.0], [[0.1], [0.2]])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(-1000, 1000), min_size=3, max_size=12))
def test_spearman_is_invariant_under_monotone_maps(xs):
    rho = spearman(xs, [math.exp(x / 1000) + 3 * x for x in xs])  # strictly increasing, ties kept as ties
    if len(set(xs)) > 1:
        assert rho == pytest.approx(1.0)
    else:
        assert math.isnan(rho)


def test_markdown_lists_every_predictor():
    runs = [[0.1, 0.12], [0.3, 0.28]]
    doc = {"accuracy": {"se": judge_predictor(["a", "b"], [0.1, 0.3], [0.0, 0.0], runs, n_boot=200),
                        "greedy accuracy": judge_predictor(["a", "b"], [0.5, 0.2], [0.1, 0.1], runs, n_boot=200)}}
    md = verdict_markdown(doc, ["a", "b"], 2)
    assert "| se | +1.00" in md and "| greedy accuracy | -1.00" in md and "resolve 1 of 1 pairs" in md


def test_interval_with_the_target_noise_covers_95_percent_of_independent_redraws():
    """A synthetic case with known variances, shaped like predict-rl's accuracy target: the growth is <u_bar, g_bar>,
    u_bar a mean of N per-prompt updates and g_bar a mean of M per-held-out-prompt gradients, both noisy. The
    training-side standard error alone (predict-rl's old interval) under-covers; adding the target's
    per-prompt contributions in quadrature (`combined_se`) covers about 95%."""
    rng = np.random.default_rng(0)
    k, n, m, reps = 20, 16, 12, 2000
    mu_u, mu_g = rng.normal(size=k) * 0.3, rng.normal(size=k) * 0.3
    truth = float(mu_u @ mu_g)
    hits_full = hits_train = 0
    for _ in range(reps):
        u = mu_u + rng.normal(size=(n, k))
        g = mu_g + 1.5 * rng.normal(size=(m, k))
        ub, gb = u.mean(0), g.mean(0)
        est = float(ub @ gb)
        se_train = float((u @ gb).std(ddof=1) / math.sqrt(n))  # the prompts' noise, G held fixed
        contrib = g @ ub  # per held-out prompt: <u_bar, g_j>, averaging to est
        se = combined_se(se_train, contrib)
        hits_full += abs(est - truth) <= 1.96 * se
        hits_train += abs(est - truth) <= 1.96 * se_train
    assert 0.93 <= hits_full / reps <= 0.98  # slightly conservative: both sides count the product of the two noises
    assert hits_train / reps < 0.85
