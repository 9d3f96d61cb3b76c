"""Hessian-vector terms of predict-rl: the second-order change per batch and the noise trace tr(H_T Sigma_w).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from sample_effect.data.examples import TokenizedExample
from sample_effect.errors import SampleEffectError
from sample_effect.growth.noise import CentredRows, NoiseEffect, target_loss_hvp, trace_from_centred
from sample_effect.growth.rl_batches import batch_updates
from sample_effect.growth.rl_effects import RLEffects
from sample_effect.growth.trajectory import StepContext


def second_order_effects(
    model: torch.nn.Module,
    ctx: StepContext,
    effects: RLEffects,
    batches: Sequence[Sequence[int]],
    target_examples: Sequence[TokenizedExample],
) -> np.ndarray:
    """Per batch S, U_S^T H_T U_S / 2 (per unit lr^2) for T = -(mean target loss): the second-order change of T.

    One Hessian-vector product per batch (split over torchrun ranks). With Adam every coordinate
    moves by about lr, so this term grows with the number of parameters and can rival the
    first-order growth at learning rates that look small.
    """
    from sample_effect.runtime import distributed as dist

    hvp = target_loss_hvp(model, ctx.params, target_examples)
    n = len(batches)
    mine = set(dist.block(n)) if dist.active() else set(range(n))
    local: dict[int, float] = {}
    for b, d in enumerate(batch_updates(effects, ctx, batches)):
        if b not in mine:
            continue
        if d is None:
            local[b] = 0.0
            continue
        hd = hvp(d)
        local[b] = -0.5 * float(sum((d[k].double() * hd[k].double()).sum() for k in d))  # H_T = -H_L
    vals = dist.gather_blocks(n, local) if dist.active() else [local[b] for b in range(n)]
    return np.asarray(vals, dtype=np.float64)


def rl_noise_effect(
    model: torch.nn.Module,
    params: Mapping[str, torch.Tensor],
    effects: RLEffects,
    target_examples: Sequence[TokenizedExample],
) -> NoiseEffect:
    """tr(H_T Sigma_w) for T = -(mean target loss), over the informative groups' kept updates.

    c_x = (n_x / mean n)(d_x - dbar_w), dbar_w = sum n_x d_x / sum n_x; the trace is
    sum_x c_x^T H_T c_x / (m - 1) with one Hessian-vector product per informative group (m of them).
    Two passes over the kept updates, one read at a time: a running sum for dbar_w, then each c_x
    formed when its Hessian-vector product needs it (`noise.CentredRows`), so one c_x is held at a time.
    """
    if effects.updates is None:
        raise SampleEffectError("the noise effect needs the per-prompt updates (rl_prompt_effects(keep_updates=True))")
    ups = effects.updates
    w = effects.n_tokens[~effects.zero_variance].astype(np.float64)
    m = len(ups)
    if m < 2:
        raise SampleEffectError(f"the noise effect needs at least 2 prompts with reward variance, got {m}")
    names = list(params)
    if len(w) != m:
        raise SampleEffectError("the kept updates do not match the informative groups")
    wbar = float(w.mean())
    total: dict[str, Any] = dict.fromkeys(names, 0)  # sum(...) per parameter, in the same order
    for wi, u in zip(w, ups):
        for nm in names:
            total[nm] = total[nm] + float(wi) * u[nm]
        del u
    dbar = {nm: total[nm] / float(w.sum()) for nm in names}
    del total
    centred = CentredRows(ups, [float(wi) / wbar for wi in w], dbar)
    return trace_from_centred(centred, target_loss_hvp(model, params, target_examples), sign=-1.0)  # H_T = -H_L
