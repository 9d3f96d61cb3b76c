"""The typed predict-rl result (`growth.rl_results.RLGrowth`): its dict view is the JSON record, key for key."""

from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch
from conftest import TARGET, TRAIN

from sample_effect import UpdateConfig, load_model
from sample_effect.data.examples import examples_from_records, tokenize_examples
from sample_effect.engine.core import ComputeConfig
from sample_effect.engine.vectors import TargetVector
from sample_effect.growth.rl import predict_rl
from sample_effect.growth.rl_results import RLGrowth, RLReplay
from sample_effect.models.loading import select_parameters
from sample_effect.rollouts.groups import sample_groups
from sample_effect.rollouts.prompts import RLPrompt
from sample_effect.targets.core import AccuracyTarget, LossTarget

QUIET = ComputeConfig(progress=False)

# The record's keys, in the order of the JSON predict-rl writes (before RLGrowth existed).
RECORD_KEYS = [
    "target", "target_norm", "target_loss", "target_stats", "n_prompts", "group_size", "n_rollouts", "reward_mean",
    "mean_completion_tokens", "zero_variance_groups", "zero_variance_fraction", "optimizer", "lr", "clip",
    "prompts_per_step", "informative_per_step", "empty_batch_probability", "effect_per_step", "effect_token_weighted",
    "effect_mean", "effect_mean_stderr", "positive_effect", "positive_effect_ci95", "noise_effect",
    "noise_effect_stderr", "noise_trace", "noise_hessian_effect", "noise_batch_effect", "noise_batch_stderr",
    "noise_batch_exact", "noise_batch_draws", "noise_note", "second_order_effect", "second_order_stderr",
    "second_order_draws", "growth_rate_second_order", "second_order_note", "growth_rate", "growth_rate_ci95",
    "growth_rate_ci_method", "n_bootstrap", "seed", "replay", "prompts_per_step_requested", "warnings", "temperature",
    "max_new_tokens", "seconds",
]


def long_completion(prompt, completion, answer, finished=True):
    return float(len(completion.strip()) >= 4)


@pytest.fixture(scope="module")
def setup(model_dirs):
    model, tok = load_model(model_dirs["gpt2"], "float64")
    params = select_parameters(model, r"h\.1\.mlp")
    tgt, _ = tokenize_examples(examples_from_records(list(enumerate(TARGET, 1))), tok)
    prompts = [RLPrompt(f"p{i}", r["prompt"], "") for i, r in enumerate(TRAIN[:5])]
    groups = sample_groups(model, tok, prompts, long_completion, 4, 1.0, 3, seed=5, progress=False)
    return model, tok, params, tgt, groups


def _targets(tok, params, tgt):
    gen = torch.Generator().manual_seed(1)
    direction = TargetVector({n: torch.randn(p.shape, generator=gen, dtype=torch.float64) for n, p in params.items()},
                             "direction")
    held = [RLPrompt(f"h{i}", r["prompt"], "") for i, r in enumerate(TARGET)]
    accuracy = AccuracyTarget(held, long_completion, tok, n_samples=4, temperature=1.0, seed=1, max_new_tokens=3)
    return {"loss": (LossTarget(tgt), UpdateConfig("sgd", lr=1e-3), {"curvature_draws": 2, "horizon_lrs": (1e-3, 5e-4)}),
            "direction": (direction, UpdateConfig("sgd", lr=1e-3), {}),
            "accuracy": (accuracy, UpdateConfig("adamw", lr=1e-3, clip=1.0), {"horizon_lrs": (1e-3,), "replay_runs": 2})}


@pytest.mark.parametrize("kind", ["loss", "direction", "accuracy"])
def test_growth_dict_view_is_the_record_and_round_trips(setup, kind):
    model, tok, params, tgt, groups = setup
    target, update, kw = _targets(tok, params, tgt)[kind]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pred = predict_rl(model, tok, [], long_completion, target, update, groups=groups, params=params,
                          prompts_per_step=2, compute=QUIET, n_boot=20, noise_draws=4, **kw)
    rec, growth = pred.record, pred.growth
    assert list(rec) == RECORD_KEYS and rec["target"] == kind
    assert rec == growth.to_dict()
    back = RLGrowth.from_dict(rec)
    assert back.to_dict() == rec and list(back.to_dict()) == RECORD_KEYS
    # The record holds neither the Hessian term's own standard error nor the batch term's growth standard error.
    expected = dataclasses.replace(growth, hessian=dataclasses.replace(growth.hessian, stderr=None),
                                   batch=dataclasses.replace(growth.batch, growth_stderr=None))
    assert back == expected
    assert RLGrowth.from_dict({"model": "m", **rec}) == back  # the CLI's rows carry a model name too
    assert growth.growth_rate_second_order == rec["growth_rate_second_order"]
    assert (growth.replay is not None) == (kind != "direction")
    if growth.replay is not None:
        assert growth.replay.computed and len(growth.replay.per_step) == len(kw["horizon_lrs"])
    pred.record["growth_rate"] = 0.0  # the dict view is fresh: writing to it leaves the prediction alone
    assert pred.growth.growth_rate == rec["growth_rate"]


def test_a_skipped_replay_keeps_its_three_keys():
    skipped = RLReplay(note="not computed: too large")
    assert not skipped.computed
    assert list(skipped.to_dict()) == ["note", "per_step", "total"]
    assert RLReplay.from_dict(skipped.to_dict()) == skipped
    done = RLReplay(note="n", per_step=[0.1], total=0.1, total_stderr=None, total_runs_95=[0.0, 0.2], runs=2)
    assert list(done.to_dict()) == ["per_step", "total", "total_stderr", "total_runs_95", "runs", "note"]
    assert RLReplay.from_dict(done.to_dict()) == done
