"""Effects toward many targets in one pass: each column equals the one-target path and a float64 loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import TARGET, TRAIN
from test_oracle import grouped, oracle_loss

from sample_effect import ComputeConfig, SampleEffectError, UpdateConfig, load_model
from sample_effect.data.examples import examples_from_records, tokenize_examples
from sample_effect.models.loading import select_parameters
from sample_effect.scoring.effects import compute_effects
from sample_effect.scoring.matrix import compute_effect_matrix
from sample_effect.targets.core import LossTarget
from sample_effect.update.optim import state_from_state_dict


def _setup(model_dirs):
    model, tok = load_model(model_dirs["qwen2"], "float64")
    params = select_parameters(model)
    exs, _ = tokenize_examples(examples_from_records(list(enumerate(TRAIN, 1))), tok)
    tgt, _ = tokenize_examples(examples_from_records([(f"t{i}", r) for i, r in enumerate(TARGET)]), tok)
    return model, params, exs, tgt


def _adam_state(model_dirs, model, params):
    """A real AdamW state: two torch.optim.AdamW steps on two examples' oracle losses (weights restored after)."""
    tok = load_model(model_dirs["qwen2"], "float64")[1]
    saved = {n: p.detach().clone() for n, p in params.items()}
    opt = torch.optim.AdamW(list(params.values()), lr=1e-3, weight_decay=0.01)
    for pairs in list(grouped(TRAIN).values())[:2]:
        opt.zero_grad()
        oracle_loss(model, tok, pairs).backward()
        opt.step()
    state = state_from_state_dict(opt.state_dict(), list(params), params, torch.float64)
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(saved[n])
            p.grad = None
    return state


@pytest.mark.parametrize("rule", ["sgd", "sgd-clip", "adamw", "adamw-state"])
def test_columns_equal_one_target_at_a_time(model_dirs, rule):
    model, params, exs, tgt = _setup(model_dirs)
    update = {"sgd": UpdateConfig("sgd"), "sgd-clip": UpdateConfig("sgd", clip=0.3),
              "adamw": UpdateConfig("adamw", clip=1.0, weight_decay=0.01),
              "adamw-state": UpdateConfig("adamw", clip=1.0, weight_decay=0.01)}[rule]
    state = _adam_state(model_dirs, model, params) if rule == "adamw-state" else None
    compute = ComputeConfig(batch_size=2, progress=False)
    targets = [LossTarget([t]) for t in tgt] + [LossTarget(tgt)]
    got = compute_effect_matrix(model, params, exs, targets, update, state, compute)
    assert got.shape == (len(exs), len(targets))
    for j, t in enumerate(targets):
        want = compute_effects(model, params, exs, t.resolve(model, params, exs, compute), update, state, compute).effect
        np.testing.assert_allclose(got[:, j], want, rtol=1e-9, atol=1e-12)
    # the mean target's column is the mean of the per-example targets' columns (G is linear in the target set)
    np.testing.assert_allclose(got[:, -1], got[:, :-1].mean(1), rtol=1e-9, atol=1e-12)


def test_sgd_matrix_equals_naive_loop(model_dirs):
    """E[i, j] = -<g_i, grad loss_j> for SGD, with g_i from one loss.backward() per example (float64)."""
    model, params, exs, tgt = _setup(model_dirs)
    tok = load_model(model_dirs["qwen2"], "float64")[1]
    leaves = list(params.values())

    def grads(rows):
        return torch.stack([torch.cat([g.flatten() for g in torch.autograd.grad(oracle_loss(model, tok, pairs), leaves)])
                            for pairs in grouped(rows).values()])

    gi, gt = grads(TRAIN), grads(TARGET)
    want = (gi @ gt.T).numpy()  # d = -g_i per unit lr, G = -grad loss_j: e = <-g_i, -grad loss_j>
    got = compute_effect_matrix(model, params, exs, [LossTarget([t]) for t in tgt], UpdateConfig("sgd"),
                                compute=ComputeConfig(batch_size=3, progress=False))
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


def test_errors(model_dirs):
    model, params, exs, tgt = _setup(model_dirs)
    with pytest.raises(SampleEffectError, match="no target"):
        compute_effect_matrix(model, params, exs, [], UpdateConfig("sgd"))
    with pytest.raises(SampleEffectError, match="empty"):
        compute_effect_matrix(model, params, [], [LossTarget(tgt)], UpdateConfig("sgd"))
