"""predict-sft: the replayed schedule is the trainer's, the first step is exact to first order, noise is a real term."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import TARGET, TRAIN

from sample_effect import ComputeConfig, load_model
from sample_effect.data.examples import examples_from_records, tokenize_examples
from sample_effect.engine.core import example_loss_values
from sample_effect.growth.sft import (
    batch_schedule,
    predict_sft_curve,
    schedule_lrs,
    sft_update,
    total_steps,
)
from sample_effect.models.loading import select_parameters
from sample_effect.targets.core import LossTarget, resolve_target
from sample_effect.training import SFTConfig, train_sft
from sample_effect.training.common import adamw_update

COMPUTE = ComputeConfig(progress=False)


def _setup(model_dirs, arch="qwen2"):
    model, tok = load_model(model_dirs[arch], "float64")
    train, _ = tokenize_examples(examples_from_records(list(enumerate(TRAIN, 1))), tok)
    target, _ = tokenize_examples(examples_from_records(list(enumerate(TARGET, 1))), tok)
    return model, tok, train, target


def test_batch_schedule_is_the_trainers_own(model_dirs, monkeypatch):
    import sample_effect.training.sft as sft

    model, tok, train, _ = _setup(model_dirs)
    cfg = SFTConfig(update=adamw_update(1e-6, clip=None), batch_size=2, grad_accum=2, epochs=2.0, seed=7)
    seen: list[list[str]] = []
    real = sft.batch_loss
    monkeypatch.setattr(sft, "batch_loss", lambda m, batch: (seen.append([e.id for e in batch]), real(m, batch))[1])
    train_sft(model, tok, train, cfg, progress=False)
    total = total_steps(cfg, len(train))
    replay = [[[train[i].id for i in micro] for micro in step] for step in batch_schedule(cfg, len(train), total, cfg.seed)]
    assert [m for step in replay for m in step] == seen
    lrs = schedule_lrs(SFTConfig(update=adamw_update(1.0), warmup_steps=2, schedule="cosine"), 5)
    assert lrs[0] == pytest.approx(0.5) and lrs[1] == pytest.approx(1.0) and lrs[-1] < lrs[2]


@pytest.mark.parametrize("clip", [None, 0.5])
def test_predicted_seed_path_matches_real_training_at_small_lr(model_dirs, clip):
    """The seed path is the first-order change the real run makes: at lr 1e-6, 3 AdamW steps, within 1%."""
    model, tok, train, target = _setup(model_dirs)
    params = select_parameters(model)
    g = resolve_target(LossTarget(target), model, params, train, COMPUTE)
    cfg = SFTConfig(update=adamw_update(1e-6, clip=clip, weight_decay=0.01), batch_size=2, max_steps=3, seed=3)
    curve = predict_sft_curve(model, params, train, g, cfg, replicates=4, compute=COMPUTE, target_examples=target)
    before = float(example_loss_values(model, target).mean())
    assert curve.start_value == pytest.approx(before, rel=1e-12)
    metrics = train_sft(model, tok, train, cfg, eval_examples=target, progress=False)
    actual = before - float(metrics["eval_loss"].iloc[-1])
    predicted = float(curve.steps["seed_path"].sum())
    assert abs(predicted - actual) < 1e-2 * abs(actual)
    assert list(curve.steps.columns) == ["step", "lr", "positive", "noise", "noise_se", "seed_path", "predicted",
                                         "cumulative", "target"]
    np.testing.assert_allclose(curve.steps["cumulative"], np.cumsum(curve.steps["positive"] + curve.steps["noise"]))


def test_noise_vanishes_when_every_batch_is_the_whole_set(model_dirs):
    model, _, train, target = _setup(model_dirs, "gpt2")
    params = select_parameters(model)
    g = resolve_target(LossTarget(target), model, params, train, COMPUTE)
    whole = SFTConfig(update=adamw_update(1e-4), batch_size=len(train), max_steps=4)
    curve = predict_sft_curve(model, params, train, g, whole, replicates=3, compute=COMPUTE)
    assert np.abs(curve.steps["noise"]).max() < 1e-9 * np.abs(curve.steps["positive"]).max()
    small = SFTConfig(update=adamw_update(1e-4), batch_size=1, max_steps=4)
    noisy = predict_sft_curve(model, params, train, g, small, replicates=6, compute=COMPUTE)
    assert np.abs(noisy.steps["noise"]).max() > 1e-3 * np.abs(noisy.steps["positive"]).max()
    assert (noisy.steps["noise_se"] > 0).all()


def test_sgd_noise_is_the_hessian_term(model_dirs):
    from sample_effect.growth.noise import noise_effect_loss_target
    from sample_effect.update.optim import UpdateConfig

    model, _, train, target = _setup(model_dirs, "llama")
    params = select_parameters(model, r"layers\.1\.mlp")
    g = resolve_target(LossTarget(target), model, params, train, COMPUTE)
    cfg = SFTConfig(update=adamw_update(1e-3, clip=None), batch_size=2, max_steps=2)
    curve = predict_sft_curve(model, params, train, g, cfg, update=sft_update(cfg, "sgd"), target_examples=target,
                              compute=COMPUTE)
    trace = noise_effect_loss_target(model, params, train, target, UpdateConfig("sgd"), COMPUTE).trace
    n = len(train)  # batches of 2 drawn without replacement from n: finite-population factor (n - 2) / n
    np.testing.assert_allclose(curve.steps["noise"], 1e-3**2 / (2 * 2) * trace * (n - 2) / n, rtol=1e-10)
    # SGD positive effect per step is lr * <-mean g, G>: the mean of the SGD sample effects
    from sample_effect.scoring.effects import compute_effects

    e = compute_effects(model, params, train, g, UpdateConfig("sgd"), compute=COMPUTE).effect
    np.testing.assert_allclose(curve.steps["positive"], 1e-3 * e.mean(), rtol=1e-9)


def test_cli_predict_sft_compares_datasets(model_dirs, data_files, tmp_path):
    from sample_effect.cli.main import main

    out = tmp_path / "p.json"
    args = ["predict-sft", "--model", str(model_dirs["gpt2"]), "--data", f"a={data_files['train']}",
            "--data", f"b={data_files['target']}", "--target-data", str(data_files["target"]), "--lr", "1e-4",
            "--batch-size", "2", "--steps", "3", "--replicates", "2", "--out", str(out), "--quiet"]
    assert main(args) == 0
    doc = json.loads(out.read_text())
    assert [d["name"] for d in doc["datasets"]] == ["a", "b"]
    # training on the target set itself must be predicted to lower its loss more than other data
    assert doc["datasets"][1]["predicted_total_change"] > doc["datasets"][0]["predicted_total_change"] > -1
    curves = pd.read_csv(tmp_path / "p.csv")
    assert set(curves["dataset"]) == {"a", "b"} and (tmp_path / "p.png").stat().st_size > 0
    assert main(args) == 2  # refuses to overwrite
    assert main([*args[:-5], "--replicates", "0", "--out", str(tmp_path / "q.json"), "--quiet"]) == 2
    assert not (tmp_path / "q.json").exists()


@pytest.mark.slow
def test_cli_validate_curves_and_selection(model_dirs, data_files, tmp_path):
    from sample_effect.cli.main import main

    base = ["--model", str(model_dirs["qwen2"]), "--target-data", str(data_files["target"]), "--lr", "1e-6",
            "--batch-size", "2", "--steps", "2", "--quiet", "--dtype", "float64"]
    assert main(["validate", "curves", *base, "--data", f"train={data_files['train']}",
                 "--data", f"self={data_files['target']}", "--replicates", "2", "--out", str(tmp_path / "c.json")]) == 0
    doc = json.loads((tmp_path / "c.json").read_text())
    for d in doc["datasets"]:  # at lr 1e-6 the run's own batch path predicts its change to first order
        assert d["seed_path_total"] == pytest.approx(d["actual_total_change"], rel=0.01)
    assert doc["agreement"]["same_order"] is True
    assert main(["validate", "selection", *base, "--data", str(data_files["train"]), "--k", "2", "--random-seeds", "2",
                 "--out", str(tmp_path / "s.json")]) == 0
    sel = json.loads((tmp_path / "s.json").read_text())
    assert [g["group"] for g in sel["groups"]] == ["top", "random", "bottom"]
    assert len(sel["runs"]) == 4 and (tmp_path / "s.png").exists()
    top = next(g for g in sel["groups"] if g["group"] == "top")
    bottom = next(g for g in sel["groups"] if g["group"] == "bottom")
    assert top["mean_effect"] > bottom["mean_effect"]
