"""Adam/AdamW effects <delta_theta(s) / lr, G> for a block of per-example gradients, in place.

The fused `effect_rows` of the Adam and AdamW update rules (`sample_effect.update.rules.adam`):
the arithmetic of their reference step (which mirrors torch.optim op for op) rearranged to reuse
one buffer: the gradient block is overwritten with m / denom and contracted with G, so a block of
e examples costs two [e, *shape] buffers instead of the eight temporaries of the reference
formula. The AdamW decay term -wd <theta, G> is the same for every example and is left to the
rule's `shared_dot`.
"""

from __future__ import annotations

import torch


def adam_effect_rows(
    grad: torch.Tensor,
    param: torch.Tensor,
    target: torch.Tensor,
    decoupled: bool,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    exp_avg: torch.Tensor | None = None,
    exp_avg_sq: torch.Tensor | None = None,
    step: float = 0.0,
    want_sq_norms: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(<d_e, G> without AdamW's decay term, ||grad_e||^2 if asked) for grad [e, *shape]; grad is overwritten.

    d_e is one Adam (decoupled=False: L2 weight decay added to the gradient) or AdamW
    (decoupled=True: the decay is not in the rows) step per unit lr from the state (exp_avg,
    exp_avg_sq, step), as torch takes it. It takes 12 plain arguments on purpose: kernels/ holds pure
    functions of tensors and numbers that know no config or state objects (the update rule unpacks them).
    """
    g = grad
    sq = torch.linalg.vector_norm(g.flatten(1), dim=1).square() if want_sq_norms else None
    if not decoupled and weight_decay:
        g.add_(param, alpha=weight_decay)
    t = step + 1
    bias_correction1 = 1 - beta1**t
    bias_correction2_sqrt = (1 - beta2**t) ** 0.5
    if exp_avg is None and exp_avg_sq is None:
        # fresh state: m = (1 - b1) g and sqrt(v) = sqrt(1 - b2) |g|, so the step is a scaled g / (c |g| + eps);
        # the same numbers as torch's to rounding, in four passes over the block instead of nine
        denom = torch.abs(g).mul_((1 - beta2) ** 0.5 / bias_correction2_sqrt).add_(eps)
        g.div_(denom)
        dots = g.flatten(1) @ target.flatten().to(g.dtype)
        return dots.mul_(-(1 - beta1) / bias_correction1), sq
    denom = torch.mul(g, g).mul_(1 - beta2)  # torch: exp_avg_sq.mul_(beta2).addcmul_(grad, grad, 1 - beta2)
    if exp_avg_sq is not None:
        denom.add_(exp_avg_sq, alpha=beta2)
    denom.sqrt_().div_(bias_correction2_sqrt).add_(eps)
    if exp_avg is None:
        g.mul_(1 - beta1)  # torch: exp_avg.lerp_(grad, 1 - beta1) from zero
    else:
        g.lerp_(exp_avg, beta1)  # m0 + (1 - b1)(g - m0), written from g's side
    g.div_(denom)
    dots = g.flatten(1) @ target.flatten().to(g.dtype)
    return dots.mul_(-1.0 / bias_correction1), sq

