"""The TRL / transformers Trainer callback: predicted vs actual change of a target loss per step."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
from conftest import TARGET, TRAIN

from sample_effect.data.examples import examples_from_records, tokenize_examples
from sample_effect.errors import SampleEffectError
from sample_effect.integrations.trl import CSV_COLUMNS, TargetChangeCallback, predicted_change
from sample_effect.models.tiny import build_tiny_model

STEPS = 3


@pytest.mark.parametrize(
    ("cls", "kwargs"),
    [
        (torch.optim.SGD, {"lr": 0.1, "weight_decay": 0.1}),
        (torch.optim.Adam, {"lr": 0.01, "weight_decay": 0.1}),
        (torch.optim.AdamW, {"lr": 0.01, "weight_decay": 0.1}),
    ],
)
def test_predicted_change_is_the_real_step(cls, kwargs):
    """lr * <d, G> equals <delta_theta, G> of the real torch step, from a fresh and a used state."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(4, 3).double()
    opt = cls(lin.parameters(), **kwargs)
    names = {id(p): n for n, p in lin.named_parameters()}
    target = {n: torch.randn_like(p) for n, p in lin.named_parameters()}
    for _ in range(3):
        opt.zero_grad()
        lin(torch.randn(5, 4, dtype=torch.float64)).pow(2).sum().backward()
        pred, lr = predicted_change(opt, names, target)
        before = {n: p.detach().clone() for n, p in lin.named_parameters()}
        opt.step()
        real = sum(float(((p.detach() - before[n]) * target[n]).sum()) for n, p in lin.named_parameters())
        assert lr == kwargs["lr"]
        assert pred == pytest.approx(real, rel=1e-9)


def test_unsupported_optimizer_is_an_error():
    lin = torch.nn.Linear(2, 2)
    lin(torch.randn(1, 2)).sum().backward()
    names = {id(p): n for n, p in lin.named_parameters()}
    target = {n: torch.zeros_like(p) for n, p in lin.named_parameters()}
    with pytest.raises(SampleEffectError, match="momentum"):
        predicted_change(torch.optim.SGD(lin.parameters(), lr=0.1, momentum=0.9), names, target)
    with pytest.raises(SampleEffectError, match="not supported"):
        predicted_change(torch.optim.RMSprop(lin.parameters(), lr=0.1), names, target)
    with pytest.raises(SampleEffectError, match="empty"):
        TargetChangeCallback([])


@pytest.fixture(scope="module")
def sft_run(tokenizer, tmp_path_factory):
    """3 optimiser steps of a real trl.SFTTrainer (batch 2, accumulation 2, clipping 1.0) on tiny Qwen2."""
    Dataset = pytest.importorskip("datasets").Dataset
    trl = pytest.importorskip("trl")
    SFTConfig, SFTTrainer = trl.SFTConfig, trl.SFTTrainer

    out = tmp_path_factory.mktemp("trl")
    model = build_tiny_model("qwen2", tokenizer, torch.float64, seed=1)
    target, _ = tokenize_examples(examples_from_records([(i + 1, r) for i, r in enumerate(TARGET)]), tokenizer)
    ds = Dataset.from_list([{"prompt": r["prompt"], "completion": " " + r["response"]} for r in TRAIN] * 4)
    cb = TargetChangeCallback(target, csv_path=out / "target.csv")
    args = SFTConfig(
        output_dir=str(out / "run"), max_steps=STEPS, learning_rate=1e-4, per_device_train_batch_size=2,
        gradient_accumulation_steps=2, max_grad_norm=1.0, lr_scheduler_type="linear", warmup_steps=0,
        weight_decay=0.01, logging_steps=1, report_to="none", save_strategy="no", use_cpu=True, seed=0,
        dataloader_num_workers=0, disable_tqdm=True,
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tokenizer)
    cb.attach(trainer)
    trainer.train()
    return cb, trainer, out


def test_sft_trainer_prediction_matches_actual_change(sft_run):
    cb, trainer, _ = sft_run
    assert [r["step"] for r in cb.rows] == list(range(1, STEPS + 1))
    lrs = [r["lr"] for r in cb.rows]
    assert lrs[0] == pytest.approx(1e-4) and lrs[1] < lrs[0]  # the scheduler's lr at each step
    grad_norms = [h["grad_norm"] for h in trainer.state.log_history if "grad_norm" in h]
    assert max(grad_norms) > 1.0  # clipping is active
    for r in cb.rows:
        assert r["predicted_change"] > 0
        rel = abs(r["predicted_change"] / r["actual_change"] - 1)
        print(f"step {r['step']}: predicted {r['predicted_change']:.6e} actual {r['actual_change']:.6e} rel {rel:.2e}")
        assert rel < 0.02
    # consecutive rows chain: loss before step k+1 = loss before step k - actual change of step k
    for a, b in zip(cb.rows, cb.rows[1:]):
        assert b["target_loss"] == pytest.approx(a["target_loss"] - a["actual_change"], rel=1e-12)


def test_sft_trainer_logs_and_csv(sft_run, tmp_path):
    cb, trainer, out = sft_run
    logged = [h for h in trainer.state.log_history if "target_predicted_change" in h]
    assert [h["step"] for h in logged] == list(range(1, STEPS + 1))
    for h, r in zip(logged, cb.rows):
        assert h["target_predicted_change"] == r["predicted_change"]
        assert h["target_actual_change"] == r["actual_change"]
        assert h["target_loss"] == pytest.approx(r["target_loss"] - r["actual_change"])
    df = pd.read_csv(out / "target.csv")
    assert tuple(df.columns) == CSV_COLUMNS and len(df) == STEPS
    assert all(math.isclose(a, r["predicted_change"], rel_tol=1e-12) for a, r in zip(df["predicted_change"], cb.rows))

    from sample_effect.cli.main import main

    assert main(["plot", "training", str(out / "target.csv"), "--y", "actual_change", "--out", str(tmp_path / "t.png")]) == 0
    assert (tmp_path / "t.png").stat().st_size > 0


def test_grpo_trainer_prediction_matches_actual_change(tmp_path):
    """2 steps of a real trl.GRPOTrainer (4 generations, accumulation 2, clipping 1.0) on tiny float64 Qwen2."""
    Dataset = pytest.importorskip("datasets").Dataset
    trl = pytest.importorskip("trl")
    from conftest import CORPUS

    from sample_effect.models.tiny import train_tokenizer

    tok = train_tokenizer(CORPUS * 5, vocab_size=320, pad="<|pad|>")
    model = build_tiny_model("qwen2", tok, torch.float64, seed=1)
    target, _ = tokenize_examples(examples_from_records([(i + 1, r) for i, r in enumerate(TARGET)]), tok)
    # one prompt: no left padding in generation (fully masked pad rows give NaN under float64 eager attention)
    ds = Dataset.from_list([{"prompt": TRAIN[0]["prompt"]}] * 24)

    def reward(completions, **kwargs):
        return [float(len(c) % 7) for c in completions]

    cb = TargetChangeCallback(target, csv_path=tmp_path / "target.csv")
    args = trl.GRPOConfig(
        output_dir=str(tmp_path / "run"), max_steps=2, learning_rate=1e-5, lr_scheduler_type="constant",
        per_device_train_batch_size=4, num_generations=4, gradient_accumulation_steps=2, max_grad_norm=1.0,
        max_completion_length=6, beta=0.0, logging_steps=1, report_to="none", save_strategy="no", use_cpu=True,
        seed=0, dataloader_num_workers=0, disable_tqdm=True,
    )
    trainer = trl.GRPOTrainer(model=model, reward_funcs=reward, args=args, train_dataset=ds, processing_class=tok)
    cb.attach(trainer)
    trainer.train()
    assert [r["step"] for r in cb.rows] == [1, 2]
    for r in cb.rows:
        rel = abs(r["predicted_change"] / r["actual_change"] - 1)
        print(f"GRPO step {r['step']}: predicted {r['predicted_change']:.6e} actual {r['actual_change']:.6e} rel {rel:.2e}")
        assert rel < 0.02
    assert len(pd.read_csv(tmp_path / "target.csv")) == 2
    assert sum("target_actual_change" in h for h in trainer.state.log_history) == 2
