"""ConfigError: library errors name the config field, the CLI prints the flag that sets it."""

from __future__ import annotations

import argparse
import dataclasses
import inspect

import pytest

from sample_effect.cli.main import _one_line, build_parser
from sample_effect.cli.options import flag_for
from sample_effect.engine.core import ComputeConfig, plan_chunk
from sample_effect.engine.projection import ProjectionConfig
from sample_effect.errors import ConfigError, SampleEffectError
from sample_effect.growth.rl_config import RLPredictConfig
from sample_effect.training import GRPOConfig, SFTConfig
from sample_effect.training.common import adamw_update
from sample_effect.training.imitation import OnPolicyConfig, RFTConfig
from sample_effect.update.optim import UpdateConfig

BAD = [
    (SFTConfig, {"update": adamw_update(-1.0)}, "SFTConfig.lr must be a positive number, got -1.0", "--lr must be a positive number"),
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
    names = _names(cls)
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


# --------------------------------------------------------------------------------------------
# Plain functions: the library names `function.parameter`, the CLI the flag
# --------------------------------------------------------------------------------------------


def _owners() -> dict[str, object]:
    """Every owner a message or FIELD_FLAGS names, by name (imported here: some pull in torch)."""
    from sample_effect.analysis.markers import parse_marker_sets
    from sample_effect.analysis.quantiles import check_settings
    from sample_effect.data.examples import tokenize_example, tokenize_examples
    from sample_effect.data.kk import generate_puzzles
    from sample_effect.data.sources import read_records
    from sample_effect.growth.rl import predict_rl
    from sample_effect.growth.sft import predict_sft_curve
    from sample_effect.io import check_output_path
    from sample_effect.models.loading import select_parameters
    from sample_effect.models.lora import apply_lora
    from sample_effect.models.tiny import init_tiny_student
    from sample_effect.rollouts.groups import sample_groups
    from sample_effect.rollouts.prompts import chat_template_prompts
    from sample_effect.rollouts.rewards import get_reward
    from sample_effect.scoring.effects import resolve_state
    from sample_effect.store.cache import score_rank
    from sample_effect.targets.core import AccuracyTarget
    from sample_effect.update.hf_checkpoint import load_trainer_optimizer_state
    from sample_effect.update.optim import load_optimizer_state
    from sample_effect.validation.linearization import linearization_check
    from sample_effect.validation.rl_curves import rl_curve
    from sample_effect.validation.stability import StabilityConfig

    objs = [
        SFTConfig, GRPOConfig, RLPredictConfig, UpdateConfig, ComputeConfig, ProjectionConfig, RFTConfig, OnPolicyConfig,
        AccuracyTarget, StabilityConfig, parse_marker_sets, check_settings, tokenize_example, tokenize_examples,
        generate_puzzles, read_records, resolve_state, predict_rl, predict_sft_curve, check_output_path,
        select_parameters, apply_lora, init_tiny_student, sample_groups, get_reward, score_rank,
        load_trainer_optimizer_state, load_optimizer_state, linearization_check, rl_curve, chat_template_prompts,
    ]
    return {o.__name__: o for o in objs}


def _names(owner: object) -> set[str]:
    """The fields of a config class (a trainer config's `update` settings too, which its messages name), or the parameters of a function."""
    if dataclasses.is_dataclass(owner):
        fields = {f.name for f in dataclasses.fields(owner)}
        return fields | ({f.name for f in dataclasses.fields(UpdateConfig)} if "update" in fields else set())
    return set(inspect.signature(owner).parameters)


def _check_refs(refs) -> None:
    """Every (owner, field) a message names is real, and the CLI's flag for it exists."""
    owners, flags = _owners(), _all_flags()
    for owner, name in refs:
        assert name in _names(owners[owner]), (owner, name)
        assert flag_for(owner, name) in flags, (owner, name, flag_for(owner, name))


def _linear():
    import torch

    return torch.nn.Linear(2, 2)


def _cases(tmp_path):
    """(owner, call, library text, CLI text): one bad call per message."""
    o = _owners()
    existing = tmp_path / "exists.csv"
    existing.write_text("x\n")
    accuracy = o["AccuracyTarget"](prompts=[], reward="kk", tokenizer=object(), n_samples=1)

    def accuracy_call():
        from sample_effect.targets.accuracy import accuracy_gradient

        accuracy_gradient(accuracy, None, {})

    return [
        ("generate_puzzles", lambda: o["generate_puzzles"](9, 1),
         "generate_puzzles.n_people must be between 2 and 8, got 9", "--people must be between 2 and 8, got 9"),
        ("generate_puzzles", lambda: o["generate_puzzles"](3, 0), "generate_puzzles.count must be >= 1, got 0",
         "--n must be >= 1, got 0"),
        ("apply_lora", lambda: o["apply_lora"](_linear(), 0), "apply_lora.r must be >= 1, got 0", "--lora-r must be >= 1, got 0"),
        ("select_parameters", lambda: o["select_parameters"](_linear(), "h.(0"),
         "select_parameters.pattern is not a valid regular expression", "--params is not a valid regular expression"),
        ("select_parameters", lambda: o["select_parameters"](_linear(), "no_such_layer"),
         "no parameters match select_parameters.pattern 'no_such_layer'", "no parameters match --params 'no_such_layer'"),
        ("check_settings", lambda: o["check_settings"](1.5, 5, 1), "check_settings.q must be in [0, 1], got 1.5",
         "--quantile must be in [0, 1], got 1.5"),
        ("check_settings", lambda: o["check_settings"](0.5, 0, 1), "check_settings.min_count must be >= 1, got 0",
         "--min-count must be >= 1, got 0"),
        ("parse_marker_sets", lambda: o["parse_marker_sets"](["oops"]),
         "parse_marker_sets.specs expects NAME=word1,word2,..., got 'oops'", "--markers expects NAME=word1,word2,..., got 'oops'"),
        ("get_reward", lambda: o["get_reward"]("kk2"), "unknown reward 'kk2' for get_reward.name;",
         "unknown reward 'kk2' for --reward;"),
        ("score_rank", lambda: o["score_rank"](None, [], None, UpdateConfig(), shard_size=0),
         "score_rank.shard_size must be >= 1, got 0", "--shard-size must be >= 1, got 0"),
        ("score_rank", lambda: o["score_rank"](None, [], None, UpdateConfig(), resume=True),
         "score_rank.resume needs score_rank.cache_dir", "--resume needs --cache-dir (the directory of the run to resume)"),
        ("tokenize_examples", lambda: o["tokenize_examples"]([None], None, max_length=1),
         "tokenize_examples.max_length must be at least 2, got 1", "--max-length must be at least 2, got 1"),
        ("read_records", lambda: o["read_records"](tmp_path / "x.jsonl", split="train"),
         "read_records.split train applies to a `datasets` directory", "--split train applies to a `datasets` directory"),
        ("load_optimizer_state", lambda: o["load_optimizer_state"](tmp_path / "missing.pt", {}),
         "load_optimizer_state.path file not found", "--optimizer-state file not found"),
        ("resolve_state", lambda: o["resolve_state"](None, {}, UpdateConfig("sgd"), tmp_path / "s.pt"),
         "resolve_state.optimizer_state holds Adam moments; use UpdateConfig.optimizer adam or adamw with it",
         "--optimizer-state holds Adam moments; use --optimizer adam or adamw with it"),
        ("StabilityConfig", lambda: o["StabilityConfig"](top_k=0).validate(),
         "StabilityConfig.top_k must be an integer >= 1, got 0", "--stability-top-k must be an integer >= 1, got 0"),
        ("StabilityConfig", lambda: o["StabilityConfig"](resamples=-1).validate(),
         "StabilityConfig.resamples must be an integer >= 0", "--stability-resamples must be an integer >= 0"),
        ("check_output_path", lambda: o["check_output_path"](existing, overwrite=False),
         "(pass check_output_path.overwrite to replace it)", f"output file already exists: {existing} (pass --overwrite to replace it)"),
        ("init_tiny_student", lambda: o["init_tiny_student"](tmp_path / "nope", tmp_path / "out"),
         "init_tiny_student.source: no model directory at", "--tokenizer-from: no model directory at"),
        ("linearization_check", lambda: o["linearization_check"](None, {}, [], [], UpdateConfig(), []),
         "linearization_check.lrs must be positive numbers", "--lrs must be positive numbers"),
        ("rl_curve", lambda: o["rl_curve"]("x", None, [], None, [], GRPOConfig(), runs=0),
         "rl_curve.runs must be >= 1, got 0", "--runs must be >= 1, got 0"),
        ("predict_sft_curve", lambda: o["predict_sft_curve"](None, {}, [], None, SFTConfig(), replicates=0),
         "predict_sft_curve.replicates must be >= 1, got 0", "--replicates must be >= 1, got 0"),
        ("sample_groups", lambda: o["sample_groups"](None, None, [], "kk", 2, 1.0, max_new_tokens=0),
         "sample_groups.max_new_tokens must be >= 1, got 0", "--max-new-tokens must be >= 1, got 0"),
        ("AccuracyTarget", accuracy_call, "AccuracyTarget.n_samples must be >= 2 with baseline 'loo', got 1",
         "--target-samples must be >= 2 with baseline 'loo', got 1"),
    ]


def test_function_errors_name_the_parameter_and_the_cli_the_flag(tmp_path):
    cases = _cases(tmp_path)
    assert len({owner for owner, *_ in cases}) >= 8
    for owner, call, library, cli in cases:
        with pytest.raises(ConfigError) as info:
            call()
        err = info.value
        assert isinstance(err, SampleEffectError) and err.owner == owner, (owner, err.owner)
        assert library in str(err), (str(err), library)
        assert "--" not in str(err), str(err)
        assert cli in _one_line(err), (_one_line(err), cli)
        assert err.fields and set(err.fields) <= _names(_owners()[owner]), (owner, err.fields)
        _check_refs(err.refs)


def test_memory_guard_names_the_budget_and_the_length(model_dirs):
    from sample_effect import load_model
    from sample_effect.models.loading import select_parameters

    model, _ = load_model(model_dirs["qwen2"], "float32")
    with pytest.raises(ConfigError) as info:
        plan_chunk(model, select_parameters(model), 8, ComputeConfig(memory_budget="1KB"))
    err = info.value
    assert str(err).endswith("raise ComputeConfig.memory_budget or lower tokenize_examples.max_length")
    assert _one_line(err).endswith("raise --memory-budget or lower --max-length")
    assert err.fields == ("memory_budget",) and ("tokenize_examples", "max_length") in err.refs
    _check_refs(err.refs)


def test_field_flags_name_real_fields_and_real_flags():
    from sample_effect.cli.options import FIELD_FLAGS

    _check_refs(FIELD_FLAGS)


def test_fields_of_other_owners_and_literal_angle_brackets():
    from sample_effect.errors import literal
    from sample_effect.models.loading import select_parameters

    err = ConfigError("A", "<x> and <B.y>, not <<z>")
    assert str(err) == "A.x and B.y, not <z>" and err.fields == ("x",) and err.refs == (("A", "x"), ("B", "y"))
    assert err.render(lambda owner, name: f"[{owner}:{name}]") == "[A:x] and [B:y], not <z>"
    assert str(ConfigError("A", f"<x> got {literal('<x> <<y>')}")) == "A.x got <x> <<y>"
    with pytest.raises(ConfigError) as info:  # a named group in a user's regex is not a field
        select_parameters(_linear(), "(?P<layer>nothing)")
    assert info.value.fields == ("pattern",)
    assert _one_line(info.value) == "no parameters match --params '(?P<layer>nothing)'"


def test_rl_warnings_name_fields_in_python_and_flags_in_the_cli():
    import copy
    import json
    import pickle

    from sample_effect.errors import FieldText, render_text
    from sample_effect.growth.rl_warnings import prompts_per_step_warning, zero_variance_warning

    clamp = prompts_per_step_warning(20, 4)
    assert isinstance(clamp, FieldText) and isinstance(clamp, str) and "--" not in clamp
    assert clamp.startswith("predict-rl: RLPredictConfig.prompts_per_step 20 exceeds the 4 prompts given")
    cli = render_text(clamp, flag_for)
    assert cli.startswith("predict-rl: --prompts-per-step 20 exceeds the 4 prompts given")
    assert cli.endswith("or --prompts-per-step at most 4 (train-grpo's default is 8)")

    zero = zero_variance_warning(4, 4, 2, 1.0)
    assert isinstance(zero, FieldText) and "--" not in zero
    for text in ("(RLPredictConfig.group_size, now 2)", "such as predict_rl.reward kk-partial",
                 "a higher RLPredictConfig.temperature (now 1)"):
        assert text in zero, text
    cli = render_text(zero, flag_for)
    for text in ("(--group-size, now 2)", "such as --reward kk-partial", "a higher --temperature (now 1)"):
        assert text in cli, text
    assert "RLPredictConfig" not in cli and "predict_rl." not in cli
    _check_refs(clamp.refs + zero.refs)

    # A plain string to everything else: equal, JSON, pickle and copy keep the text (and the template).
    assert zero == str(zero) and json.loads(json.dumps([zero])) == [str(zero)]
    for again in (pickle.loads(pickle.dumps(zero)), copy.deepcopy(zero)):
        assert again == zero and render_text(again, flag_for) == cli
    assert render_text("plain text <x>", flag_for) == "plain text <x>"


def test_user_text_with_angle_brackets_is_kept_verbatim(tmp_path):
    """A path or a name the user gave is never read as a field, from Python or from the CLI."""
    from sample_effect.io import check_output_path
    from sample_effect.rollouts.rewards import get_reward
    from sample_effect.training import SFTConfig

    odd = tmp_path / "<run>"
    odd.mkdir()
    existing = odd / "out.csv"
    existing.write_text("x\n")
    cases = [(lambda: check_output_path(existing, overwrite=False), str(existing)),
             (lambda: get_reward("<lr>"), "unknown reward '<lr>'"),
             (lambda: SFTConfig(schedule="<lr>").validate(), "unknown SFTConfig.schedule '<lr>'")]
    for call, text in cases:
        with pytest.raises(ConfigError) as info:
            call()
        assert text in str(info.value), str(info.value)
        assert text.replace("SFTConfig.schedule", "--schedule") in _one_line(info.value), _one_line(info.value)
