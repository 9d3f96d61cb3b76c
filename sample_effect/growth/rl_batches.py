"""The trainer's step on a batch of prompts, from the kept per-prompt gradients: batch updates, their effects, replays.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from sample_effect.errors import SampleEffectError
from sample_effect.growth.rl_effects import RLEffects
from sample_effect.growth.trajectory import StepContext, draw_batches, simulate, vector_dot


def batch_updates(
    effects: RLEffects, ctx: StepContext, batches: Sequence[Sequence[int]]
) -> Iterator[dict[str, torch.Tensor] | None]:
    """Per batch S of prompts, the simulated trainer step per unit lr U(clip(gbar_S)) (None: no informative group).

    gbar_S = sum n_x g_x / sum n_x over S's informative groups (the gradient of the trainer's
    token-mean loss), clipped by its own norm as `clip_grad_norm_` clips the batch, then one
    simulated optimiser step from `ctx`'s state. A generator: one update is held at a time, and gbar_S
    is a running sum over the batch's gradients read one at a time from `effects.grads`.
    """
    slot = gradient_slots(effects, "the batch terms")
    for idx in batches:
        g = batch_gradient(effects, slot, ctx.names, idx)
        yield None if g is None else ctx.step(g)[0]


def gradient_slots(effects: RLEffects, what: str) -> dict[int, int]:
    """Prompt index -> row of `effects.grads` for every informative group (SampleEffectError if none were kept)."""
    if effects.grads is None:
        raise SampleEffectError(f"{what} need the per-prompt gradients (rl_prompt_effects(keep_grads=True))")
    informative = np.flatnonzero(~effects.zero_variance)
    if len(effects.grads) != len(informative):
        raise SampleEffectError("the kept gradients do not match the informative groups")
    return {int(x): j for j, x in enumerate(informative)}


def batch_gradient(effects: RLEffects, slot: Mapping[int, int], names: Sequence[str], idx: Sequence[int]) -> dict | None:
    """gbar_S = sum n_x g_x / sum n_x over the informative groups of batch `idx` (None: it has none).

    A running sum: the batch's rows are read from `effects.grads` one at a time.
    """
    chosen = [int(x) for x in idx if int(x) in slot]
    if not chosen:
        return None
    w = effects.n_tokens[chosen].astype(np.float64)
    w = w / w.sum()
    g: dict[str, Any] = dict.fromkeys(names, 0)  # sum(...) per parameter, in the same order
    for wi, x in zip(w, chosen):
        row = effects.grads[slot[x]]
        for nm in names:
            g[nm] = g[nm] + float(wi) * row[nm]
        del row
    return g


def batch_step_effects(effects: RLEffects, ctx: StepContext, batches: Sequence[Sequence[int]]) -> np.ndarray:
    """Per unit lr, the first-order effect <U(clip(gbar_S)), G> of the trainer's step on each batch S of prompts.

    A batch with no informative group takes no step (0). Averaged over batches this is the
    expected first-order growth of a real step; its gap to the positive effect is the noise
    effect of a non-linear update (Adam, clipping). See `batch_updates`.
    """
    out = np.zeros(len(batches))
    for b, d in enumerate(batch_updates(effects, ctx, batches)):
        if d is not None:
            out[b] = vector_dot(d, effects.target.vector)
    return out


def mean_batch_update(
    effects: RLEffects, ctx: StepContext, batches: Sequence[Sequence[int]]
) -> dict[str, torch.Tensor]:
    """E_S[U(clip(gbar_S))] per unit lr over `batches`: the expected trainer step, a batch with no informative group counting 0.

    Its dot with G is the mean of `batch_step_effects` over the same batches (the first-order growth
    per unit lr, batch term included). One dense vector plus the batch being formed are resident.
    """
    total = {n: torch.zeros_like(p, dtype=effects.target.vector[n].dtype) for n, p in ctx.params.items()}
    for d in batch_updates(effects, ctx, batches):
        if d is not None:
            for n in total:
                total[n] += d[n].to(total[n].dtype)
    return {n: t / max(1, len(batches)) for n, t in total.items()}


def replay_path(
    effects: RLEffects,
    ctx: StepContext,
    lrs: Sequence[float],
    batch: int,
    runs: int,
    seed: int = 0,
) -> np.ndarray:
    """[runs, steps] first-order target change lr_t <d_t, G> of simulated GRPO runs on the frozen prompt gradients.

    Each run draws its batches as `train_grpo` does (seeded permutations of the prompts, `batch`
    per step, a new permutation when one runs out), forms the batch's token-weighted mean gradient
    over its informative groups (`batch_updates`), clips it by its norm and takes the optimiser's
    step from the state the previous steps left (AdamW's moments and step count carried, as the
    trainer carries them); a batch with no informative group takes no step. Gradients, weights and
    G stay those of the start, so what this adds to `lr * growth` per step is the optimiser's own
    dynamics (for AdamW, steps shrink as the moments average the batches' noise), not curvature.
    """
    slot = gradient_slots(effects, "the replay")
    n, b = len(effects.effect), min(batch, len(effects.effect))
    out = np.zeros((runs, len(lrs)))
    for r in range(runs):
        rng = np.random.default_rng([seed, r])
        batches = draw_batches(n, b, len(lrs), lambda k, rng=rng: rng.permutation(k).tolist())
        # a batch without an informative group gives None: the trainer takes no step
        out[r] = simulate(ctx, lrs, lambda t, bs=batches: batch_gradient(effects, slot, ctx.names, bs[t]),
                          effects.target.vector)
    return out
