"""Loss functions: cross-checks against transformers and hand computations."""

from __future__ import annotations

import torch

from sample_effect import load_model
from sample_effect.objectives.losses import (
    grpo_advantages,
    grpo_loss,
    sft_sequence_loss,
    token_logprobs,
)


def test_sft_loss_matches_transformers_labels_loss(model_dirs):
    model, _ = load_model(model_dirs["gpt2"], "float32")
    ids = torch.tensor([[3, 7, 9, 11, 4, 5]])
    mask = torch.tensor([[False, False, True, True, True]])  # response = tokens 3..5
    labels = ids.clone()
    labels[0, :3] = -100
    ref = model(input_ids=ids, labels=labels).loss
    ours = sft_sequence_loss(model(input_ids=ids).logits, ids, mask)[0]
    assert torch.allclose(ours, ref, atol=1e-6)


def test_grpo_advantages_by_hand():
    r = torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    adv = grpo_advantages(r)
    std = torch.tensor([1.0, 0.0, 0.0, 1.0]).std(unbiased=True)  # sqrt(1/3)
    assert torch.allclose(adv[0], (torch.tensor([1.0, 0.0, 0.0, 1.0]) - 0.5) / (std + 1e-6))
    assert torch.equal(adv[1], torch.zeros(4))  # zero-variance group carries no signal
    assert torch.equal(grpo_advantages(torch.tensor([[1.0]])), torch.zeros(1, 1))


def test_grpo_loss_on_policy_gradient_is_minus_advantage_logprob(model_dirs):
    model, _ = load_model(model_dirs["llama"], "float64")
    ids = torch.tensor([[3, 7, 9, 11], [3, 8, 10, 12]])
    mask = torch.tensor([[False, True, True], [False, True, True]])
    adv = torch.tensor([0.7, -0.7], dtype=torch.float64)
    params = [p for p in model.parameters()]
    lp = token_logprobs(model(input_ids=ids).logits, ids)
    g1 = torch.autograd.grad(grpo_loss(lp, lp.detach(), adv, mask), params)
    lp = token_logprobs(model(input_ids=ids).logits, ids)
    manual = -(adv[:, None] * lp * mask).sum() / mask.sum()
    g2 = torch.autograd.grad(manual, params)
    for a, b in zip(g1, g2):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-15)
