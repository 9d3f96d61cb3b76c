"""ConfigError: library errors name the config field, the CLI prints the flag that sets it."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from sample_effect.cli.main import _one_line, build_parser
from sample_effect.cli.options import flag_for
from sample_effect.engine.core import ComputeConfig, plan_chunk
from sample_effect.engine.projection import ProjectionConfig
from sample_effect.errors import ConfigError, SampleEffectError
from sample_effect.growth.rl import RLPredictConfig
from sample_effect.training import GRPOConfig, SFTConfig
from sample_effect.training.imitation import OnPolicyConfig, RFTConfig
from sample_effect.update.optim import UpdateConfig

BAD = [
    (SFTConfig, {"lr": -1.0}, "SFTConfig.lr must be a positive number, got -1.0", "--lr must be a positive number"),
    (SFTConfig, {"batch_size": 0}, "SFTConfig.batch_size and SFTConfig.grad_accum must be >= 1",
     "--batch-size and --grad-accum must be >= 1"),
    (SFTConfig, {"max_steps": 0}, "SFTConfig.max_steps must be >= 1, got 0", "--steps must be >= 1, got 0"),
    (GRPOConfig, {"group_size": 1}, "GRPOConfig.group_size must be >= 2", "--group-size must be >= 2"),
    (RLPredictConfig, {"n_boot": 0}, "RLPredictConfig.n_boot must be >= 1, got 0", "--bootstrap must be >= 1, got 0"),
    (UpdateConfig, {"clip": -1.0}, "UpdateConfig.clip must be a positive number", "--clip must be a positive number"),
    (UpdateConfig, {"optimizer": "adam", "beta1": 1.0}, "UpdateConfig.beta1 must be in [0, 1)", "--beta1 must be in [0, 1)"),
    (UpdateConfig, {"weight_decay": -0.1}, "UpdateConfig.weight_decay must be >= 0", "--weight-decay must be >= 0"),
    (ProjectionConfig, {"dim": 0}, "ProjectionConfig.dim must be >= 1", "--dim must be >= 1"),
    (RFTConfig, {"threshold": float("nan")}, "RFTConfig.threshold must be a finite number", "--threshold must be a finite"),
    (RFTConfig, {"drop_uniform": True, "samples_per_prompt": 1},
     "RFTConfig.drop_uniform needs RFTConfig.samples_per_prompt >= 2", "--drop-uniform needs --samples-per-prompt >= 2"),
    (OnPolicyConfig, {"prompts_per_step": 0}, "OnPolicyConfig.prompts_per_step must be >= 1",
     "--prompts-per-step must be >= 1"),
]


def _all_flags() -> set[str]:
    """Every option string of every sub-command (argparse internals: test-only)."""
    flags: set[str] = set()
    todo = [build_parser()]
    while todo:
        p = todo.pop()
        for action in p._actions:
            flags.update(action.option_strings)
            if isinstance(action, argparse._SubParsersAction):
                todo.extend(action.choices.values())
    return flags


@pytest.mark.parametrize(("cls", "kwargs", "library", "cli"), BAD, ids=[f"{c.__name__}-{next(iter(k))}" for c, k, _, _ in BAD])
def test_library_names_the_field_and_the_cli_the_flag(cls, kwargs, library, cli):
    with pytest.raises(ConfigError) as info:
        cls(**kwargs).validate()
    err = info.value
    assert isinstance(err, SampleEffectError) and library in str(err)
    names = {f.name for f in dataclasses.fields(cls)}
    assert err.owner == cls.__name__ and set(err.fields) <= names, (err.fields, names)
    assert cli in _one_line(err)
    flags = _all_flags()
    for name in err.fields:
        assert flag_for(err.owner, name) in flags, (err.owner, name)


def test_compute_chunk_error_names_the_chunk_flag(model_dirs):
    from sample_effect import load_model
    from sample_effect.models.loading import select_parameters

    model, _ = load_model(model_dirs["qwen2"], "float32")
    with pytest.raises(ConfigError, match=r"ComputeConfig\.batch_size must be >= 1") as info:
        plan_chunk(model, select_parameters(model), 8, ComputeConfig(batch_size=0))
    assert _one_line(info.value).startswith("--chunk-size must be >= 1")


def test_angle_brackets_outside_field_names_are_left_alone():
    err = ConfigError("SFTConfig", "<lr> got '<a b>' and <1x>")
    assert str(err) == "SFTConfig.lr got '<a b>' and <1x>" and err.fields == ("lr",)
