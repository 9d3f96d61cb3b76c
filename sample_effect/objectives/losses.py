"""The training losses, defined once: the engine differentiates these and the trainers minimise them.

Cross-entropy is computed here rather than by transformers' `labels=` path, which casts logits to
float32 and so would spoil float64 checks. Half-precision logits are upcast to float32 (the
"float32 accumulation" of a bfloat16 model); float32 and float64 logits keep their dtype.
"""

from __future__ import annotations

import torch


def _work_dtype(logits: torch.Tensor) -> torch.Tensor:
    if logits.dtype in (torch.float16, torch.bfloat16):
        return logits.float()
    return logits


def token_logprobs(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """log pi(x_t | x_<t) for t = 1..T-1: logits [..., T, V], ids [..., T] -> [..., T-1]."""
    logp = torch.log_softmax(_work_dtype(logits[..., :-1, :]), dim=-1)
    return logp.gather(-1, input_ids[..., 1:].unsqueeze(-1)).squeeze(-1)


def sft_sequence_loss(logits: torch.Tensor, input_ids: torch.Tensor, label_mask: torch.Tensor) -> torch.Tensor:
    """Mean token cross-entropy over the response tokens of each sequence ([..., T] -> [...]).

    `label_mask` ([..., T-1]) is True where the next-token target is a response token; prompt and
    padding positions contribute nothing.
    """
    lp = token_logprobs(logits, input_ids)
    mask = label_mask.to(lp.dtype)
    return -(lp * mask).sum(-1) / mask.sum(-1)


def example_losses(seq_losses: torch.Tensor, owner: torch.Tensor, n_examples: int) -> torch.Tensor:
    """Loss of each example = mean of its responses' sequence losses (owner[i] = example of sequence i)."""
    sums = torch.zeros(n_examples, dtype=seq_losses.dtype, device=seq_losses.device).index_add(0, owner, seq_losses)
    counts = torch.bincount(owner, minlength=n_examples).to(seq_losses.dtype)
    return sums / counts


def grpo_advantages(rewards: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Group-normalised advantages A_i = (r_i - mean r) / (std r + eps), unbiased std, per row.

    `rewards` is [n_groups, G]. A group whose rewards are all equal gets zero advantages (it
    carries no learning signal); with G = 1 the advantage is 0.
    """
    r = rewards.to(torch.float64) if not rewards.is_floating_point() else rewards
    mean = r.mean(-1, keepdim=True)
    if r.shape[-1] < 2:
        return torch.zeros_like(r)
    std = r.std(-1, unbiased=True, keepdim=True)
    return (r - mean) / (std + eps)


def grpo_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float = 0.2,
    ref_logprobs: torch.Tensor | None = None,
    kl_coef: float = 0.0,
) -> torch.Tensor:
    """GRPO policy loss: token-mean over the batch of -min(ratio A, clip(ratio) A) (+ k3 KL to a reference).

    logprobs, old_logprobs, mask: [B, L] per generated token; advantages: [B]. With one on-policy
    step old_logprobs == logprobs.detach(), the ratio is 1, the clip is inactive and the gradient
    is the token-mean of -A_i grad log pi(y_i,t).
    """
    m = mask.to(logprobs.dtype)
    ratio = torch.exp(logprobs - old_logprobs)
    adv = advantages.to(device=logprobs.device, dtype=logprobs.dtype).unsqueeze(-1)  # CPU advantages, GPU model
    per_token = -torch.minimum(ratio * adv, torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps) * adv)
    if ref_logprobs is not None and kl_coef:
        delta = ref_logprobs - logprobs
        per_token = per_token + kl_coef * (torch.exp(delta) - delta - 1)
    return (per_token * m).sum() / m.sum().clamp_min(1)
