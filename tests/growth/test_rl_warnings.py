"""predict-rl says loudly when its prediction cannot be informative: every (or most) group with zero reward
variance, or more prompts per step than prompts; the library warns, the CLI prints WARNING lines."""

from __future__ import annotations

import warnings

import pytest
from conftest import TARGET, TRAIN, write_jsonl

from sample_effect import UpdateConfig, load_model
from sample_effect.cli.main import main
from sample_effect.engine.core import ComputeConfig
from sample_effect.engine.vectors import TargetVector
from sample_effect.growth.rl import predict_rl
from sample_effect.growth.rl_warnings import RLPredictionWarning, zero_variance_warning
from sample_effect.models.loading import select_parameters
from sample_effect.rollouts.groups import sample_groups
from sample_effect.rollouts.prompts import RLPrompt

QUIET = ComputeConfig(progress=False)


def constant(prompt, completion, answer, finished=True):
    return 1.0


def _direction(params):
    return TargetVector({n: p.detach().clone() for n, p in params.items()}, "direction")


def _groups(model_dirs, n=4):
    model, tok = load_model(model_dirs["gpt2"], "float64")
    params = select_parameters(model)
    prompts = [RLPrompt(f"p{i}", r["prompt"], "") for i, r in enumerate(TRAIN[:n])]
    return model, tok, params, sample_groups(model, tok, prompts, constant, 2, 1.0, 2, seed=0, progress=False)


def test_all_zero_variance_groups_warn_loudly_with_what_to_change(model_dirs):
    model, tok, params, groups = _groups(model_dirs)
    with pytest.warns(RLPredictionWarning, match="ALL 4 prompt groups have zero reward variance") as caught:
        rec = predict_rl(model, tok, [], constant, _direction(params), UpdateConfig("sgd"), groups=groups,
                         prompts_per_step=2, compute=QUIET, n_boot=10).record
    msg = str(caught[0].message)
    for advice in ("RLPredictConfig.group_size", "kk-partial", "RLPredictConfig.temperature", "SFT"):
        assert advice in msg
    assert rec["growth_rate"] == 0.0 and rec["zero_variance_fraction"] == 1.0
    assert rec["warnings"] == [msg]


def test_mostly_zero_variance_groups_get_a_softer_note(model_dirs):
    model, tok, params, groups = _groups(model_dirs)
    groups[0][0].reward = 0.0  # one informative group of four: 75% zero variance
    with pytest.warns(RLPredictionWarning, match=r"3 of 4 prompt groups \(75%\) have zero reward variance") as caught:
        rec = predict_rl(model, tok, [], constant, _direction(params), UpdateConfig("sgd"), groups=groups,
                         prompts_per_step=2, compute=QUIET, n_boot=10).record
    assert "ALL" not in str(caught[0].message) and "RLPredictConfig.group_size" in str(caught[0].message)
    assert rec["zero_variance_groups"] == 3 and len(rec["warnings"]) == 1
    assert zero_variance_warning(2, 4, 8, 1.0) is None  # half is not "more than half"
    groups[1][0].reward = 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("error", RLPredictionWarning)  # 2 of 4: no warning
        assert predict_rl(model, tok, [], constant, _direction(params), UpdateConfig("sgd"), groups=groups,
                          prompts_per_step=2, compute=QUIET, n_boot=10).record["warnings"] == []


def test_prompts_per_step_above_the_prompts_is_clamped_with_a_warning(model_dirs):
    model, tok, params, groups = _groups(model_dirs)
    groups[0][0].reward = groups[1][0].reward = 0.0
    upd = UpdateConfig("adamw", lr=1e-4, clip=1.0)
    with pytest.warns(RLPredictionWarning, match=r"RLPredictConfig\.prompts_per_step 20 exceeds the 4 prompts given"):
        big = predict_rl(model, tok, [], constant, _direction(params), upd, groups=groups, prompts_per_step=20,
                         compute=QUIET, n_boot=10).record
    exact = predict_rl(model, tok, [], constant, _direction(params), upd, groups=groups, prompts_per_step=4,
                       compute=QUIET, n_boot=10).record
    assert big["prompts_per_step"] == 4 and big["prompts_per_step_requested"] == 20
    for key in ("positive_effect", "noise_batch_effect", "growth_rate", "empty_batch_probability"):
        assert big[key] == exact[key], key  # clamping changes no number


def test_cli_prints_warning_lines_for_the_readme_example_shape(model_dirs, tmp_path, capsys):
    """The README's example: few prompts, default --prompts-per-step 8 (train-grpo's), every group zero variance."""
    rl = write_jsonl(tmp_path / "rl.jsonl", [{"id": f"p{i}", "prompt": r["prompt"], "answer": ""} for i, r in enumerate(TRAIN[:4])])
    tgt = write_jsonl(tmp_path / "target.jsonl", TARGET)
    argv = ["predict-rl", "--model", str(model_dirs["gpt2"]), "--prompts", str(rl), "--reward", "test_rl_warnings:constant",
            "--group-size", "2", "--max-new-tokens", "2", "--target-data", str(tgt), "--out", str(tmp_path / "o.json"),
            "--bootstrap", "10", "--dtype", "float64", "--quiet"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", RLPredictionWarning)  # the CLI prints them instead of warning twice
        assert main(argv) == 0
    out = capsys.readouterr().out
    lines = [x for x in out.splitlines() if x.startswith("WARNING:")]
    assert len(lines) == 2, out
    assert "--prompts-per-step 8 exceeds the 4 prompts" in lines[0]
    assert "ALL 4 prompt groups have zero reward variance" in lines[1] and "kk-partial" in lines[1]
    assert out.index("exceeds") < out.index("growth ")  # the clamp is said before the run, not after
