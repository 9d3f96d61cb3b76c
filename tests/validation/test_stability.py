"""Rank stability: resampled targets, checkpoints and orders against the reference ranking, and the
rank statistics underneath (Spearman with ties, top-k with ties and k > n, intervals)."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from sample_effect.data.examples import load_examples, tokenize_examples
from sample_effect.engine.core import ComputeConfig
from sample_effect.errors import SampleEffectError
from sample_effect.models.loading import load_model
from sample_effect.update.optim import UpdateConfig
from sample_effect.validation.stability import (
    ROW_COLUMNS,
    StabilityConfig,
    StabilityReport,
    average_ranks,
    bootstrap_draws,
    interval,
    rank_stability,
    spearman,
    top_k_indices,
    top_k_overlap,
)

COMPUTE = ComputeConfig(progress=False)
ADAMW = UpdateConfig(optimizer="adamw", clip=1.0)


@pytest.fixture(scope="module")
def setup(model_dirs, data_files):
    model, tok = load_model(model_dirs["gpt2"], "float64")
    train, _ = tokenize_examples(load_examples(data_files["train"]), tok)
    target, _ = tokenize_examples(load_examples(data_files["target"]), tok)
    return model, tok, train, target


def run(setup, **config):
    model, tok, train, target = setup
    return rank_stability(model, tok, train, target, ADAMW, COMPUTE, StabilityConfig(**config))


def test_orders_agree_exactly(setup) -> None:
    report = run(setup, resamples=0, orders=3, top_k=2)
    rows = report.rows
    assert list(rows.columns) == ROW_COLUMNS and list(rows["source"]) == ["order"] * 3
    assert (rows["spearman"] == 1.0).all() and (rows["topk_overlap"] == 1.0).all() and (rows["n_common"] == 2).all()
    assert (rows["max_rel_diff"] < 1e-12).all()  # float64: only the order of float reductions changed
    assert rows["detail"].str.contains("chunk size").all()


def test_checkpoint_identical_to_the_model_gives_one(setup, model_dirs) -> None:
    report = run(setup, resamples=0, orders=0, checkpoints=[model_dirs["gpt2"]], top_k=3)
    (row,) = report.rows.to_dict("records")
    assert row["source"] == f"checkpoint:{model_dirs['gpt2']}"
    assert row["spearman"] == 1.0 and row["topk_overlap"] == 1.0 and row["max_rel_diff"] < 1e-12
    assert report.verdicts()[0].startswith("top-3 keeps 3/3 of its examples at ")


def test_raw_examples_and_another_checkpoint(model_dirs, data_files) -> None:
    """Raw Examples are tokenised per model; another model's ranking differs from the reference."""
    model, tok = load_model(model_dirs["gpt2"], "float64")
    report = rank_stability(model, tok, load_examples(data_files["train"]), load_examples(data_files["target"]), ADAMW, COMPUTE,
                            StabilityConfig(resamples=0, orders=1, checkpoints=[model_dirs["qwen2"]], top_k=2))
    ck = report.rows[report.rows["source"].str.startswith("checkpoint:")].iloc[0]
    assert -1 <= ck["spearman"] <= 1 and ck["max_rel_diff"] > 1e-6
    assert report.rows[report.rows["source"] == "order"]["spearman"].eq(1.0).all()


def test_resampled_targets_are_bounded_and_intervals_hold_the_mean(setup) -> None:
    report = run(setup, resamples=6, orders=0, top_k=2, seed=3)
    rows = report.rows
    assert len(rows) == 6 and (rows["source"] == "target-resample").all()
    assert rows["spearman"].between(-1, 1).all() and rows["topk_overlap"].between(0, 1).all()
    (s,) = report.summary().to_dict("records")
    assert s["runs"] == 6 and s["interval"] == "percentile 95%"
    for col in ("spearman", "topk_overlap", "n_common"):
        assert s[f"{col}_lo"] <= s[col] <= s[f"{col}_hi"]
    line = report.verdicts()[0]
    assert re.match(r"top-2 keeps [\d.]+/2 \[\d, \d\] of its examples under resampled targets \(Spearman ", line), line
    assert "target-resample" in report.render() and line in report.render()


def test_matrix_and_rescore_give_the_same_resamples(setup) -> None:
    a = run(setup, resamples=3, orders=0, top_k=2, resample_method="matrix").rows
    b = run(setup, resamples=3, orders=0, top_k=2, resample_method="rescore").rows
    assert np.allclose(a["spearman"], b["spearman"], atol=1e-12) and (a["n_common"] == b["n_common"]).all()
    assert np.allclose(a["max_rel_diff"], b["max_rel_diff"], atol=1e-10)
    assert list(a["detail"]) == list(b["detail"])  # the same bootstrap draws


def test_top_k_larger_than_n_is_cut_with_a_note(setup) -> None:
    report = run(setup, resamples=0, orders=1, top_k=50)
    assert report.k == report.n == 5 and "cut to 5" in report.note
    assert report.rows["topk_overlap"].eq(1.0).all() and report.verdicts()[-1].startswith("note: top_k 50 > 5")
    assert report.verdicts()[0].endswith(": trivial, the top-k is every example")


def test_reference_is_checked_and_resamples_need_a_target_set(setup) -> None:
    model, tok, train, target = setup
    with pytest.raises(SampleEffectError, match="reference has 2 effects for 5 examples"):
        rank_stability(model, tok, train, target, ADAMW, COMPUTE, StabilityConfig(resamples=0, orders=1),
                       reference=np.zeros(2))
    with pytest.raises(SampleEffectError, match=r"StabilityConfig.resamples needs a target"):
        rank_stability(model, tok, train, None, ADAMW, COMPUTE, StabilityConfig(resamples=2))
    with pytest.raises(SampleEffectError, match=r"StabilityConfig.checkpoints: not a dir"):
        rank_stability(model, tok, train, target, ADAMW, COMPUTE, StabilityConfig(checkpoints=["/no/such/dir"]))
    with pytest.raises(SampleEffectError, match="at least 2 examples"):
        rank_stability(model, tok, train[:1], target, ADAMW, COMPUTE, StabilityConfig(resamples=0, orders=1))


@pytest.mark.parametrize(("config", "field"), [
    (dict(resamples=-1), "StabilityConfig.resamples"),
    (dict(orders=1.5), "StabilityConfig.orders"),
    (dict(top_k=0), "StabilityConfig.top_k"),
    (dict(seed="x"), "StabilityConfig.seed"),
    (dict(checkpoints="ckpt"), "StabilityConfig.checkpoints"),
    (dict(checkpoints=[3]), "StabilityConfig.checkpoints"),
    (dict(resample_method="fast"), "StabilityConfig.resample_method"),
    (dict(resamples=0, orders=0), "nothing to compare"),
])
def test_config_errors_name_the_field(config, field) -> None:
    with pytest.raises(SampleEffectError, match=re.escape(field)):
        StabilityConfig(**config).validate()


def test_spearman_against_hand_computed_values() -> None:
    assert spearman([1, 2, 3, 4, 5], [2, 1, 4, 3, 5]) == pytest.approx(0.8)  # 1 - 6 * 4 / (5 * 24)
    # ties: ranks [1, 2.5, 2.5, 4] vs [1, 2, 3, 4] -> 4.5 / sqrt(4.5 * 5)
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(4.5 / math.sqrt(22.5))
    assert spearman([1, 2, 3], [30, 20, 10]) == -1.0
    assert spearman([1, 2, np.nan, 3], [1, 2, 99, 3]) == 1.0  # the non-finite pair is dropped
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3])) and math.isnan(spearman([1], [1]))
    assert list(average_ranks([3, 1, 3, 2])) == [3.5, 1.0, 3.5, 2.0]
    with pytest.raises(SampleEffectError):
        spearman([1, 2], [1, 2, 3])


def test_spearman_matches_scipy() -> None:
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 5, 40).astype(float), rng.normal(size=40)
    assert spearman(a, b) == pytest.approx(stats.spearmanr(a, b).statistic, abs=1e-12)


def test_top_k_breaks_ties_by_input_order_and_puts_nonfinite_last() -> None:
    assert list(top_k_indices([1.0, 3.0, 3.0, np.nan, 2.0], 2)) == [1, 2]
    assert list(top_k_indices([np.nan, 1.0], 5)) == [1, 0]
    assert top_k_overlap([5, 4, 3, 2], [2, 3, 4, 5], 2) == 0
    assert top_k_overlap([5, 4, 3, 2], [5, 3, 4, 2], 2) == 1


def test_intervals_percentile_from_five_runs_else_min_max() -> None:
    assert interval([0.5, 1.0]) == (0.75, 0.5, 1.0)
    mean, lo, hi = interval(np.linspace(0, 1, 101))
    assert mean == pytest.approx(0.5) and lo == pytest.approx(0.02) and hi == pytest.approx(0.98)
    assert all(math.isnan(v) for v in interval([np.nan]))
    draws = bootstrap_draws(4, 3, seed=1)
    assert len(draws) == 3 and all(len(d) == 4 and d.max() < 4 for d in draws)
    assert all((x == y).all() for x, y in zip(draws, bootstrap_draws(4, 3, seed=1)))


def test_verdict_words() -> None:
    import pandas as pd

    rows = pd.DataFrame([{"source": "target-resample", "index": i, "spearman": 0.2, "topk_overlap": o,
                          "n_common": o * 10, "max_rel_diff": 0.1, "detail": ""} for i, o in enumerate([0.2, 0.4, 0.3])])
    line = StabilityReport(rows, k=10, n=50).verdicts()[0]
    assert line.startswith("top-10 keeps 3/10 [2, 4] of its examples under resampled targets") and line.endswith("unstable")
