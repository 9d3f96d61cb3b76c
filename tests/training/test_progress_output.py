"""Long work says what it is doing: SFT's greedy evaluation, predict-sft's replayed steps, the linearisation check."""

from __future__ import annotations

from dataclasses import replace

import pytest
from conftest import TARGET, TRAIN

from sample_effect import ComputeConfig, UpdateConfig, load_model
from sample_effect.data.examples import examples_from_records, tokenize_examples
from sample_effect.growth.sft import predict_sft_curve
from sample_effect.models.loading import select_parameters
from sample_effect.targets.core import LossTarget, resolve_target
from sample_effect.training import SFTConfig, train_sft
from sample_effect.training.common import adamw_update
from sample_effect.training.sft import evaluate_accuracy
from sample_effect.validation.linearization import linearization_check

PROMPTS = [(r["prompt"], r["response"]) for r in TARGET]  # two (prompt, answer) pairs


def reward(prompt, completion, answer, finished=True):
    """Half the puzzles 'solved', whatever the model writes."""
    return 1.0 if "Bob" in prompt else 0.0


def _setup(model_dirs, dtype="float32"):
    model, tok = load_model(model_dirs["llama"], dtype)
    train, _ = tokenize_examples(examples_from_records(list(enumerate(TRAIN, 1))), tok)
    target, _ = tokenize_examples(examples_from_records(list(enumerate(TARGET, 1))), tok)
    return model, tok, train, target


def test_sft_shows_greedy_evaluation_progress(model_dirs, capfd):
    model, tok, train, target = _setup(model_dirs)
    cfg = SFTConfig(update=adamw_update(1e-3), max_steps=2, batch_size=2, eval_every=1, eval_max_new_tokens=2)
    m = train_sft(model, tok, train, cfg, eval_examples=target, eval_prompts=PROMPTS, reward=reward, progress=True)
    err = capfd.readouterr().err
    assert "evaluating (step 0) 1/2 puzzles" in err and "evaluating (step 2) 2/2 puzzles" in err
    assert "evaluating the loss on 2 examples" in err
    assert list(m["step"]) == [0, 1, 2] and m["eval_accuracy"].tolist() == [0.5, 0.5, 0.5]


def test_sft_quiet_writes_nothing(model_dirs, capfd):
    model, tok, train, _ = _setup(model_dirs)
    cfg = SFTConfig(update=adamw_update(1e-3), max_steps=1, batch_size=2, eval_max_new_tokens=2)
    train_sft(model, tok, train, cfg, eval_prompts=PROMPTS, reward=reward, progress=False)
    assert "evaluating" not in capfd.readouterr().err


def test_evaluate_accuracy_is_the_mean_reward(model_dirs):
    model, tok, _, _ = _setup(model_dirs)
    assert evaluate_accuracy(model, tok, PROMPTS, reward, 2) == pytest.approx(0.5)
    assert evaluate_accuracy(model, tok, [], reward, 2) != evaluate_accuracy(model, tok, [], reward, 2)  # nan


def test_predict_sft_curve_progress(model_dirs, capfd):
    model, _, train, target = _setup(model_dirs, "float64")
    params = select_parameters(model)
    compute = ComputeConfig(progress=False)
    g = resolve_target(LossTarget(target), model, params, train, compute)
    cfg = SFTConfig(update=adamw_update(1e-6), batch_size=2, max_steps=3)
    quiet = predict_sft_curve(model, params, train, g, cfg, replicates=2, compute=compute)
    assert "predict-sft" not in capfd.readouterr().err
    loud = predict_sft_curve(model, params, train, g, cfg, replicates=2, compute=replace(compute, progress=True))
    err = capfd.readouterr().err
    assert "predict-sft data" in err and "12/12" in err and "batch order 2/2" in err  # (2 + 2 paths) x 3 steps
    assert loud.steps.equals(quiet.steps)


def test_linearization_check_progress(model_dirs, capfd):
    model, _, train, target = _setup(model_dirs, "float64")
    res = linearization_check(model, select_parameters(model), train, target, UpdateConfig("sgd"), [1e-6], progress=True)
    err = capfd.readouterr().err
    assert "linearization: real steps" in err and f"{len(train)}/{len(train)}" in err
    assert len(res.rows) == len(train)


@pytest.mark.parametrize("progress, shown", [(True, "rollouts"), ("accuracy samples", "accuracy samples"), (False, None)])
def test_sample_groups_progress_labels_its_bar(model_dirs, capfd, progress, shown):
    """`sample_groups(progress=...)`: False hides the bar, True labels it 'rollouts', a string is the label."""
    from sample_effect.rollouts.groups import sample_groups
    from sample_effect.rollouts.prompts import RLPrompt

    model, tok, _, _ = _setup(model_dirs)
    prompts = [RLPrompt(f"p{i}", r["prompt"], "") for i, r in enumerate(TRAIN[:2])]
    groups = sample_groups(model, tok, prompts, reward, 2, 1.0, 2, seed=0, progress=progress)
    err = capfd.readouterr().err
    assert len(groups) == 2 and all(len(g) == 2 for g in groups)
    if shown is None:
        assert "prompt" not in err
    else:
        assert f"{shown}:" in err
