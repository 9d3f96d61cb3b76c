"""Predicted vs actual held-out accuracy curves over real GRPO runs (`validation.rl_accuracy`)."""

from __future__ import annotations

import pytest
from conftest import TRAIN

from sample_effect.engine.core import ComputeConfig
from sample_effect.errors import SampleEffectError
from sample_effect.models.loading import load_model
from sample_effect.rollouts.prompts import RLPrompt
from sample_effect.training.common import adamw_update
from sample_effect.training.grpo import GRPOConfig
from sample_effect.validation.rl_accuracy import (
    AccuracyCurveConfig,
    rl_accuracy_curve,
    sampled_accuracy,
)


def long_completion(prompt, completion, answer, finished=True):
    return float(len(completion.strip()) >= 4)


def test_accuracy_curve_rows_and_summary(model_dirs):
    prompts = [RLPrompt(f"p{i}", r["prompt"], "") for i, r in enumerate(TRAIN[:4])]
    held = [RLPrompt(f"h{i}", r["prompt"] + " again", "") for i, r in enumerate(TRAIN[:3])]

    def load():
        return load_model(model_dirs["gpt2"], "float32")

    cfg = GRPOConfig(update=adamw_update(1e-3), steps=2, prompts_per_step=2, group_size=4, max_new_tokens=3, eval_every=1)
    curve = AccuracyCurveConfig(eval_samples=4, target_samples=4, runs=2, noise_draws=4)
    df, s = rl_accuracy_curve("gpt2", load, prompts, held, long_completion, cfg, curve, ComputeConfig(progress=False))
    assert sorted(df["step"].unique()) == [0, 1, 2] and sorted(df["run"].unique()) == [0, 1]
    # The predicted curve starts at the measured step-0 accuracy and moves by the growth per lr-weighted step.
    start = df[df["step"] == 0]["actual"].mean()
    assert df[df["step"] == 0]["predicted"].tolist() == pytest.approx([start] * 2)
    two = df[df["step"] == 2]["predicted"].iloc[0]
    assert two == pytest.approx(start + 2 * s["predicted_growth_per_step"])
    assert s["predicted_growth_ci95"][0] <= s["predicted_growth_per_step"] <= s["predicted_growth_ci95"][1]
    # The replay of the whole schedule (frozen gradients, AdamW state carried) gives its own curve, ending at its total.
    assert df[df["step"] == 0]["predicted_replay"].tolist() == pytest.approx([start] * 2)
    assert df[df["step"] == 2]["predicted_replay"].iloc[0] == pytest.approx(start + s["predicted_total_change_replay"])
    lo, hi = s["predicted_replay_runs_95"]
    assert lo <= s["predicted_total_change_replay"] <= hi
    assert s["predicted_leaves_range"] == (not 0 <= s["start_accuracy"] + s["predicted_total_change"] <= 1)
    assert 0.0 <= s["start_accuracy"] <= 1.0 and s["actual_total_change_se"] is not None
    # The measurement is reproducible: the same weights and seed give the same accuracy.
    m, tok = load()
    a = sampled_accuracy(m, tok, held, long_completion, 4, 1.0, 3, seed=5000)
    assert a == pytest.approx(start)


def test_accuracy_curve_settings_are_checked():
    with pytest.raises(SampleEffectError, match="target_samples"):
        AccuracyCurveConfig(target_samples=1).validate()
