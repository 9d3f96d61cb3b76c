"""Trainer configs hold an UpdateConfig: today's defaults, old flat files read back, and any registered rule trains."""

from __future__ import annotations

from dataclasses import asdict

import pytest
import torch

from sample_effect import load_model
from sample_effect.engine.core import ComputeConfig
from sample_effect.engine.vectors import TargetVector
from sample_effect.models.loading import select_parameters
from sample_effect.scoring.effects import compute_effects
from sample_effect.training import GRPOConfig, SFTConfig, train_sft
from sample_effect.training.common import adamw_update, make_optimizer
from sample_effect.update.optim import UpdateConfig


def test_defaults_are_the_trainers_adamw():
    assert SFTConfig().update == UpdateConfig("adamw", lr=1e-4, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, clip=1.0)
    assert GRPOConfig().update == UpdateConfig("adamw", lr=1e-5, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, clip=1.0)


def test_old_flat_dicts_load_to_the_same_config():
    old_sft = {"lr": 3e-4, "schedule": "cosine", "warmup_steps": 2, "batch_size": 4, "grad_accum": 1, "max_grad_norm": None,
               "epochs": 1.0, "max_steps": 5, "seed": 1, "weight_decay": 0.1, "beta1": 0.8, "beta2": 0.95, "eps": 1e-7,
               "eval_every": 0, "eval_max_new_tokens": 256, "save_every": 0}
    sft = SFTConfig(update=adamw_update(3e-4, clip=None, weight_decay=0.1, betas=(0.8, 0.95), eps=1e-7), schedule="cosine",
                    warmup_steps=2, batch_size=4, max_steps=5, seed=1)
    assert SFTConfig.from_dict(old_sft) == sft
    assert SFTConfig.from_dict(asdict(sft)) == sft
    old_grpo = {"lr": 2e-3, "steps": 3, "prompts_per_step": 2, "group_size": 4, "temperature": 1.0, "max_new_tokens": 8,
                "inner_epochs": 1, "clip_eps": 0.2, "kl_coef": 0.0, "max_grad_norm": 0.5, "weight_decay": 0.01,
                "warmup_steps": 0, "schedule": "constant", "eval_every": 1, "eval_max_new_tokens": 256, "seed": 0, "save_every": 0}
    grpo = GRPOConfig(update=adamw_update(2e-3, clip=0.5, weight_decay=0.01), steps=3, prompts_per_step=2, group_size=4,
                      max_new_tokens=8, eval_every=1)
    assert GRPOConfig.from_dict(old_grpo) == grpo
    assert GRPOConfig.from_dict(asdict(grpo)) == grpo


@pytest.mark.parametrize("name", ["adam", "adamw", "lion", "sgd"])
def test_make_optimizer_builds_the_rules_optimiser(model_dirs, name):
    model, _ = load_model(model_dirs["gpt2"], "float32")
    opt, names = make_optimizer(model, UpdateConfig(name, lr=1e-3))
    assert len(names) == len(list(model.parameters())) and opt.param_groups[0]["lr"] == 1e-3
    if name == "sgd":
        assert type(opt) is torch.optim.SGD
    if name == "adamw":
        assert isinstance(opt, torch.optim.AdamW) and opt.param_groups[0]["weight_decay"] == 0.01  # torch's default


@pytest.mark.parametrize("name", ["sgd", "lion"])
def test_sft_with_another_rule_takes_the_simulated_step(model_dirs, tmp_path, name):
    from sample_effect.data.examples import examples_from_records, tokenize_examples

    model, tok = load_model(model_dirs["gpt2"], "float64")
    ex = tokenize_examples(examples_from_records([(1, {"id": "x", "prompt": "a b", "response": " c d"})]), tok)[0][0]
    params = select_parameters(model)
    gen = torch.Generator().manual_seed(0)
    G = TargetVector({n: torch.randn(p.shape, generator=gen, dtype=torch.float64) for n, p in params.items()}, "t")
    upd = UpdateConfig(name, lr=1e-3, clip=0.5, weight_decay=0.1)
    predicted = compute_effects(model, params, [ex], G, upd, compute=ComputeConfig(progress=False)).effect[0]
    before = {n: p.detach().clone() for n, p in params.items()}
    train_sft(model, tok, [ex], SFTConfig(update=upd, max_steps=1, batch_size=1), progress=False)
    actual = sum(((p.detach() - before[n]) / 1e-3 * G.vector[n]).sum() for n, p in params.items()).item()
    assert actual == pytest.approx(predicted, rel=1e-6)
