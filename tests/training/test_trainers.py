"""Trainers: they learn, they take exactly the step the engine simulates, and their files are usable."""

from __future__ import annotations

import json
from dataclasses import asdict

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TRAIN, write_jsonl

from sample_effect import ComputeConfig, UpdateConfig, load_model
from sample_effect.cli.main import main
from sample_effect.data.examples import examples_from_records, tokenize_examples
from sample_effect.engine.vectors import TargetVector
from sample_effect.errors import ConfigError
from sample_effect.models.loading import select_parameters
from sample_effect.rollouts.prompts import RLPrompt
from sample_effect.scoring.effects import compute_effects
from sample_effect.training import (
    GRPOConfig,
    RedistillConfig,
    SFTConfig,
    redistill,
    train_grpo,
    train_sft,
)
from sample_effect.training.common import adamw_update, load_optimizer_into, make_optimizer
from sample_effect.training.sft import batch_loss
from sample_effect.update.optim import load_optimizer_state

LR = 1e-3


def tokenized(tok, rows):
    return tokenize_examples(examples_from_records(list(enumerate(rows, 1))), tok)[0]


def test_sft_loss_goes_down(model_dirs, tokenizer):
    model, tok = load_model(model_dirs["llama"], "float32")
    data = tokenized(tok, TRAIN)
    m = train_sft(model, tok, data, SFTConfig(update=adamw_update(1e-2), max_steps=30, batch_size=4, eval_every=10), eval_examples=data, progress=False)
    assert list(m["step"]) == [0, 10, 20, 30]
    assert m["eval_loss"].iloc[-1] < 0.5 * m["eval_loss"].iloc[0]


def test_sft_evaluates_at_the_extra_steps(model_dirs):
    model, tok = load_model(model_dirs["llama"], "float32")
    cfg = SFTConfig(update=adamw_update(1e-2), max_steps=6, batch_size=4, eval_every=4, eval_steps=(1, 3))
    m = train_sft(model, tok, tokenized(tok, TRAIN), cfg, eval_examples=tokenized(tok, TRAIN), progress=False)
    assert list(m["step"]) == [0, 1, 3, 4, 6]
    assert SFTConfig.from_dict(json.loads(json.dumps(asdict(cfg)))) == cfg
    with pytest.raises(ConfigError, match="eval_steps"):
        SFTConfig(eval_steps=(0,)).validate()


def _update_per_lr(before, model, names):
    named = dict(model.named_parameters())
    return {n: (named[n].detach() - before[n]) / LR for n in names}


@pytest.mark.parametrize("arch", ["gpt2", "qwen2"])
def test_sft_steps_equal_engine_simulation(model_dirs, tmp_path, arch):
    """Step 1 (fresh AdamW) and step 2 (from the saved optimizer.pt) equal the engine's simulated steps."""
    model, tok = load_model(model_dirs[arch], "float64")
    data = tokenized(tok, TRAIN)
    params = select_parameters(model)
    names = list(params)
    gen = torch.Generator().manual_seed(1)
    G = TargetVector({n: torch.randn(p.shape, generator=gen, dtype=torch.float64) for n, p in params.items()}, "t")
    ex = data[2]  # the example with two responses
    cfg = SFTConfig(update=adamw_update(LR, clip=0.05, weight_decay=0.1, betas=(0.8, 0.95), eps=1e-7), max_steps=1, batch_size=1)
    upd = UpdateConfig("adamw", lr=LR, beta1=0.8, beta2=0.95, eps=1e-7, weight_decay=0.1, clip=0.05)
    compute = ComputeConfig(progress=False)
    predicted = compute_effects(model, params, [ex], G, upd, compute=compute).effect[0]
    before = {n: p.detach().clone() for n, p in params.items()}
    train_sft(model, tok, [ex], cfg, out_dir=tmp_path / "run", progress=False)
    actual = sum((d * G.vector[n]).sum() for n, d in _update_per_lr(before, model, names).items()).item()
    assert actual == pytest.approx(predicted, rel=1e-6)

    # Step 2 from the checkpoint's optimizer.pt: engine (state file) vs a real second step.
    ckpt = tmp_path / "run" / "final"
    model2, _ = load_model(ckpt, "float64")
    params2 = select_parameters(model2)
    state = load_optimizer_state(ckpt / "optimizer.pt", params2, torch.float64)
    assert all(s == 1.0 for s in state.steps.values())
    other = data[0]
    predicted2 = compute_effects(model2, params2, [other], G, UpdateConfig("adamw", lr=LR, clip=0.05), state, compute).effect[0]
    opt, opt_names = make_optimizer(model2, adamw_update(LR, weight_decay=0.1, betas=(0.8, 0.95), eps=1e-7))
    load_optimizer_into(opt, opt_names, ckpt / "optimizer.pt")
    for g in opt.param_groups:
        g["lr"] = LR
    before = {n: p.detach().clone() for n, p in params2.items()}
    batch_loss(model2, [other]).backward()
    torch.nn.utils.clip_grad_norm_(list(params2.values()), 0.05)
    opt.step()
    actual2 = sum((d * G.vector[n]).sum() for n, d in _update_per_lr(before, model2, list(params2)).items()).item()
    assert actual2 == pytest.approx(predicted2, rel=1e-6)


def first_token_long(prompt, completion, answer, finished=True):
    """A reward half of the tokens earn: the completion (one token) is at least 3 characters."""
    return float(len(completion.strip()) >= 3)


def test_grpo_raises_an_easy_reward_and_dumps_replay(model_dirs, tmp_path):
    model, tok = load_model(model_dirs["gpt2"], "float32")
    prompts = [RLPrompt(f"p{i}", r["prompt"], "") for i, r in enumerate(TRAIN)]
    cfg = GRPOConfig(update=adamw_update(3e-2), steps=16, prompts_per_step=4, group_size=8, max_new_tokens=1, seed=0)
    m = train_grpo(model, tok, prompts, first_token_long, cfg, out_dir=tmp_path / "g", progress=False)
    assert m["reward_mean"].tail(4).mean() > m["reward_mean"].head(4).mean() + 0.2
    assert (m["zero_variance_groups"] <= m["groups"]).all()
    lines = [json.loads(x) for x in (tmp_path / "g" / "replay" / "step-00001.jsonl").read_text().splitlines()]
    assert len(lines) == 4 * 8
    assert {"step", "prompt_id", "completion", "reward", "advantage", "logprobs", "finished"} <= set(lines[0])
    assert all(len(r["logprobs"]) == 1 and r["logprobs"][0] <= 0 for r in lines)
    for pid in {r["prompt_id"] for r in lines}:  # advantages are group-normalised
        adv = np.array([r["advantage"] for r in lines if r["prompt_id"] == pid])
        assert abs(adv.mean()) < 1e-9
    assert (tmp_path / "g" / "final" / "optimizer.pt").exists()


def test_redistill_keeps_only_accepted_completions(model_dirs, tmp_path):
    model, tok = load_model(model_dirs["gpt2"], "float32")
    prompts = [RLPrompt(f"p{i}", r["prompt"], "") for i, r in enumerate(TRAIN)]
    recs = redistill(model, tok, prompts, first_token_long, tmp_path / "r.jsonl",
                     RedistillConfig(samples_per_prompt=6, keep_per_prompt=1, temperature=1.0, max_new_tokens=1), progress=False)
    assert recs and all(first_token_long("", r["response"], "") == 1.0 for r in recs)
    assert len({r["id"] for r in recs}) == len(recs)  # at most one per prompt
    assert [json.loads(x) for x in (tmp_path / "r.jsonl").read_text().splitlines()] == recs
    # the stats count every sample, kept or not; the same seed draws the same samples
    stats: dict = {}
    again = redistill(model, tok, prompts, first_token_long, tmp_path / "r2.jsonl",
                      RedistillConfig(samples_per_prompt=6, keep_per_prompt=6, temperature=1.0, max_new_tokens=1), progress=False,
                      stats=stats)
    assert stats["prompts"] == len(prompts) and stats["samples"] == 6 * len(prompts)
    assert stats["kept"] == len(again) <= stats["accepted"] and stats["accept_rate"] == stats["accepted"] / stats["samples"]
    assert stats["prompts_solved"] == len({r["id"] for r in again}) == len({r["id"] for r in recs})
    assert {r["id"] for r in recs} <= {r["id"] for r in again}


def test_train_commands_end_to_end(model_dirs, tmp_path, capsys):
    rl = write_jsonl(tmp_path / "rl.jsonl", [{"id": f"p{i}", "prompt": r["prompt"], "answer": "x"} for i, r in enumerate(TRAIN)])
    sft = write_jsonl(tmp_path / "sft.jsonl", [{**r, "answer": "Alice is a knight"} for r in TRAIN])
    m = str(model_dirs["qwen2"])
    assert main(["train-sft", "--model", m, "--data", str(sft), "--eval-data", str(sft), "--out", str(tmp_path / "s"),
                 "--steps", "2", "--batch-size", "2", "--eval-max-new-tokens", "4", "--quiet"]) == 0
    metrics = pd.read_csv(tmp_path / "s" / "metrics.csv")
    assert list(metrics["step"]) == [0, 2] and {"eval_loss", "eval_accuracy"} <= set(metrics.columns)
    assert main(["train-sft", "--model", m, "--data", str(sft), "--out", str(tmp_path / "s"), "--steps", "1", "--quiet"]) == 2
    assert "already holds a finished run" in capsys.readouterr().err
    assert main(["train-grpo", "--model", m, "--prompts", str(rl), "--out", str(tmp_path / "g"), "--steps", "1",
                 "--prompts-per-step", "2", "--group-size", "2", "--max-new-tokens", "3", "--quiet"]) == 0
    assert (tmp_path / "g" / "replay" / "step-00001.jsonl").exists()
    assert main(["redistill", "--model", m, "--prompts", str(rl), "--reward", "nope", "--out", str(tmp_path / "r.jsonl")]) == 2
    assert "unknown reward 'nope'" in capsys.readouterr().err
    assert main(["redistill", "--model", m, "--prompts", str(rl), "--reward", "exact", "--out", str(tmp_path / "r.jsonl"),
                 "--samples-per-prompt", "3", "--temperature", "1", "--max-new-tokens", "2",
                 "--stats", str(tmp_path / "r.json"), "--quiet"]) == 0
    st = json.loads((tmp_path / "r.json").read_text())
    assert st["samples"] == 3 * len(TRAIN) and st["accepted"] == 0 and st["kept"] == 0  # answer "x": nothing matches
    assert "(0 of " in capsys.readouterr().out
    assert main(["train-grpo", "--model", m, "--prompts", str(rl), "--out", str(tmp_path / "g2"), "--group-size", "1"]) == 2
    assert "--group-size must be >= 2" in capsys.readouterr().err
