"""The RL-start protocol: measured growth rates (`rl_measure`), every predictor (`rl_predictors`), the
comparison and its files (`rl_protocol`), and the `validate rl-starts` / `reference-direction` commands."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import TRAIN, write_jsonl

from sample_effect.cli.main import main
from sample_effect.engine.core import ComputeConfig
from sample_effect.engine.vectors import TargetVector
from sample_effect.growth.rl import predict_rl
from sample_effect.growth.trajectory import vector_dot
from sample_effect.models.loading import load_model, select_parameters
from sample_effect.models.tiny import save_model
from sample_effect.objectives.reinforce import reinforce_gradient
from sample_effect.rollouts.groups import sample_groups
from sample_effect.rollouts.prompts import RLPrompt
from sample_effect.training.common import adamw_update
from sample_effect.training.grpo import GRPOConfig, train_grpo
from sample_effect.validation.rl_measure import GrowthProbe, measure_runs, run_slopes
from sample_effect.validation.rl_predictors import BASELINES, PredictSettings, predict_start


def long_completion(prompt, completion, answer, finished=True):
    """About a third of 3-token completions of the tiny models earn it: at least 4 visible characters."""
    return float(len(completion.strip()) >= 4)


PROMPTS = [RLPrompt(f"p{i}", r["prompt"], "") for i, r in enumerate(TRAIN[:4])]
HELD = [RLPrompt(f"h{i}", r["prompt"] + " again", "") for i, r in enumerate(TRAIN[:3])]
CFG = GRPOConfig(update=adamw_update(1e-3, clip=1.0), steps=2, prompts_per_step=2, group_size=4, max_new_tokens=3)


def random_direction(model, seed=3):
    gen = torch.Generator().manual_seed(seed)
    return {n: torch.randn(p.shape, generator=gen, dtype=torch.float64) for n, p in select_parameters(model).items()}


def test_direction_measurement_equals_an_independent_dot_after_real_grpo_steps(model_dirs, tmp_path):
    model, _ = load_model(model_dirs["qwen2"], "float64")
    d = random_direction(model)
    probe = GrowthProbe(("direction", "accuracy"), HELD, long_completion, max_new_tokens=3, eval_samples=4,
                        accuracy_every=2, direction=d)
    calls = []

    def load():
        calls.append(1)
        return load_model(model_dirs["qwen2"], "float64")

    rows = measure_runs("q", load, PROMPTS, CFG, 2, probe, cache_dir=tmp_path)
    assert len(calls) == 2
    direction = rows[rows["measurement"] == "direction"]
    assert sorted(direction["step"].unique()) == [0, 1, 2]
    assert sorted(rows[rows["measurement"] == "accuracy"]["step"].unique()) == [0, 2]  # every 2 steps and the last
    for run in (0, 1):  # the same run again, by hand: <theta_2 - theta_0, d>
        m, tok = load_model(model_dirs["qwen2"], "float64")
        theta0 = {n: p.detach().clone() for n, p in m.named_parameters()}
        train_grpo(m, tok, PROMPTS, long_completion, GRPOConfig(**{**CFG.__dict__, "seed": run}), progress=False)
        named = dict(m.named_parameters())
        expected = sum(float(((named[n].detach() - theta0[n]) * d[n]).sum()) for n in d)
        got = direction[(direction["run"] == run) & (direction["step"] == 2)]["value"].item()
        assert got == pytest.approx(expected, rel=1e-9, abs=1e-15)
    assert direction[direction["step"] == 0]["value"].tolist() == [0.0, 0.0]
    slopes = run_slopes(rows)
    assert set(slopes["measurement"]) == {"direction", "accuracy"} and len(slopes) == 4
    # finished runs come back from the cache, without training
    again = measure_runs("q", load, PROMPTS, CFG, 2, probe, cache_dir=tmp_path)
    assert len(calls) == 2 and again["value"].tolist() == pytest.approx(rows["value"].tolist())


def test_predictors_on_one_start(model_dirs):
    model, tok = load_model(model_dirs["gpt2"], "float64")
    d = random_direction(model, seed=4)
    from sample_effect.data.examples import examples_from_records, tokenize_examples

    loss_ex = tokenize_examples(examples_from_records(list(enumerate(TRAIN[:3], 1)), "t.jsonl"), tok)[0]
    probe = GrowthProbe(("accuracy", "direction", "loss"), HELD, long_completion, max_new_tokens=3, eval_samples=4,
                        direction=d, loss_examples=loss_ex)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    settings = PredictSettings(seed=11, target_samples=4, noise_draws=8, lookahead=(1, 2))
    values = {v.name: v for v in predict_start(model, tok, PROMPTS, CFG, probe, settings, ComputeConfig(progress=False))}
    for n, p in model.named_parameters():  # the look-ahead puts the weights back
        assert torch.equal(p.detach(), before[n])
    assert set(BASELINES) <= set(values)
    assert {"sample-effect accuracy", "sample-effect direction", "sample-effect loss", "look-ahead accuracy",
            "look-ahead loss"} <= set(values)
    acc = values["sample-effect accuracy"]
    # the growth is linear in G: the per-held-out-prompt contributions average to it
    assert acc.detail["mean_of_contributions"] == pytest.approx(acc.value, rel=1e-6, abs=1e-12)
    assert acc.se >= acc.detail["se_training_prompts"] - 1e-15
    # the direction predictor is predict-rl along d; <lr V, d> is the same first-order growth
    direct = values["sample-effect direction"]
    assert direct.detail["lr_step_dot_direction"] == pytest.approx(direct.value, rel=1e-6)
    loss = values["sample-effect loss"]
    assert loss.detail["mean_of_contributions"] == pytest.approx(loss.value, rel=1e-6, abs=1e-12)
    # an independent accuracy prediction on the same samples gives the same number
    params = select_parameters(model)
    train = sample_groups(model, tok, PROMPTS, long_completion, 4, 1.0, 3, 11, progress=False)
    held = sample_groups(model, tok, HELD, long_completion, 4, 1.0, 3, 12, progress=False)
    G, _ = reinforce_gradient(model, params, held, "loo", 1.0, 16, False)
    ref = predict_rl(model, tok, PROMPTS, long_completion, TargetVector(G, "accuracy"), CFG.update, groups=train,
                     prompts_per_step=2, noise_draws=8, curvature_draws=0, compute=ComputeConfig(progress=False), seed=11)
    assert acc.value == pytest.approx(ref.growth.growth_rate, rel=1e-9)
    sampled = sum(r.reward for g in held for r in g) / sum(len(g) for g in held)
    assert values["sampled accuracy"].value == pytest.approx(sampled)
    assert values["pass@k"].value >= values["sampled accuracy"].value
    assert 0 <= values["learnability p(1-p)"].value <= 0.25
    look = values["look-ahead loss"]
    assert look.detail["t"] == [0, 1, 2] and all(math.isfinite(x) for x in look.detail["values"])
    assert vector_dot(d, d) > 0


@pytest.fixture(scope="module")
def two_starts(model_dirs, tmp_path_factory):
    """The qwen2 test model and a copy nudged along a random direction: two starts of one architecture."""
    root = tmp_path_factory.mktemp("starts")
    model, tok = load_model(model_dirs["qwen2"], "float64")
    d = random_direction(model, seed=9)
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.add_(1e-2 * d[n])
    save_model(model, tok, root / "nudged")
    return {"a": model_dirs["qwen2"], "b": root / "nudged"}


def test_validate_rl_starts_end_to_end(two_starts, tmp_path, capsys):
    rl = write_jsonl(tmp_path / "rl.jsonl", [{"id": p.id, "prompt": p.prompt, "answer": ""} for p in PROMPTS])
    held = write_jsonl(tmp_path / "held.jsonl", [{"id": p.id, "prompt": p.prompt, "answer": "", "response": " knights"}
                                                 for p in HELD])
    out = tmp_path / "cmp"
    argv = ["validate", "rl-starts", "--model", f"a={two_starts['a']}", "--model", f"b={two_starts['b']}",
            "--prompts", str(rl), "--eval-prompts", str(held), "--reward", "test_rl_protocol:long_completion",
            "--target", "direction,accuracy,loss", "--direction", str(two_starts["a"]), str(two_starts["b"]),
            "--runs", "2", "--steps", "2", "--accuracy-every", "1", "--eval-samples", "4", "--target-samples", "4",
            "--group-size", "4", "--prompts-per-step", "2", "--max-new-tokens", "3", "--lr", "1e-3",
            "--noise-draws", "8", "--bootstrap", "200", "--dtype", "float64", "--out", str(out), "--quiet"]
    assert main(argv) == 0
    doc = json.loads((out / "rl_starts.json").read_text())
    assert doc["measurement"] == "direction" and doc["measurements"] == ["direction", "accuracy", "loss"]
    preds = doc["predictors"]
    assert next(iter(preds)) == "sample-effect direction"
    assert len([p for p in preds if p in BASELINES]) >= 3
    for verdict in preds.values():
        for key in ("spearman", "spearman_ci95", "pairs_resolved", "pairs_agree", "ties"):
            assert key in verdict
    for st in doc["starts"]:
        assert set(st["measured"]) == {"direction", "accuracy", "loss"} and len(st["measured"]["direction"]["runs"]) == 2
    for f in ("rl_starts.md", "rl_starts_runs.csv", "rl_starts_direction.png", "rl_starts_accuracy.png"):
        assert (out / f).exists()
    assert "| sample-effect direction |" in (out / "rl_starts.md").read_text()
    cached = sorted(p.name for p in (out / "cache").rglob("*.*"))
    capsys.readouterr()
    assert main(argv) == 2 and "pass --overwrite" in capsys.readouterr().err  # an existing result is kept
    assert main([*argv, "--overwrite"]) == 0  # everything comes from the cache: no new file, the same numbers
    assert sorted(p.name for p in (out / "cache").rglob("*.*")) == cached
    again = json.loads((out / "rl_starts.json").read_text())
    assert [s["measured"] for s in again["starts"]] == [s["measured"] for s in doc["starts"]]


def test_validate_rl_starts_checks_its_flags(two_starts, tmp_path, capsys):
    rl = write_jsonl(tmp_path / "rl.jsonl", [{"id": "p", "prompt": "x", "answer": ""}])
    base = ["validate", "rl-starts", "--prompts", str(rl), "--eval-prompts", str(rl), "--out", str(tmp_path / "o")]
    for extra, message in (
        (["--model", str(two_starts["a"])], "at least twice"),
        (["--model", f"x={two_starts['a']}", "--model", f"x={two_starts['b']}"], "two starts are named 'x'"),
        (["--model", str(two_starts["a"]), "--model", str(two_starts["b"]), "--target", "speed"], "unknown measurement"),
        (["--model", str(two_starts["a"]), "--model", str(two_starts["b"]), "--target", "direction"], "needs --direction"),
        (["--model", str(two_starts["a"]), "--model", str(two_starts["b"]), "--runs", "1"], "error bar"),
    ):
        assert main(base + extra) == 2
        assert message in capsys.readouterr().err


def test_help_lists_the_protocol_flags(capsys):
    with pytest.raises(SystemExit):
        main(["validate", "rl-starts", "--help"])
    text = capsys.readouterr().out
    for flag in ("--model", "--prompts", "--eval-prompts", "--reward", "--runs", "--steps", "--lr", "--target",
                 "--direction", "--reference-run", "--eval-samples", "--out"):
        assert flag in text


def test_reference_direction_keeps_both_ends(model_dirs, tmp_path):
    rl = write_jsonl(tmp_path / "rl.jsonl", [{"id": p.id, "prompt": p.prompt, "answer": ""} for p in PROMPTS])
    out = tmp_path / "ref"
    assert 0 == main(["reference-direction", "--model", str(model_dirs["gpt2"]), "--prompts", str(rl), "--reward",
          "test_rl_protocol:long_completion", "--steps", "2", "--prompts-per-step", "2", "--group-size", "4",
          "--max-new-tokens", "3", "--lr", "1e-3", "--dtype", "float64", "--out", str(out), "--quiet"])
    rec = json.loads((out / "direction.json").read_text())
    a = dict(load_model(out / "start", "float64")[0].named_parameters())
    b = dict(load_model(out / "final", "float64")[0].named_parameters())
    base = dict(load_model(model_dirs["gpt2"], "float64")[0].named_parameters())
    assert all(torch.equal(a[n], base[n]) for n in a)  # the start is the model as given
    norm = math.sqrt(sum(float(((b[n] - a[n]).detach() ** 2).sum()) for n in a))
    assert rec["steps"] == 2 and rec["norm"] == pytest.approx(norm, rel=1e-9) and norm > 0
