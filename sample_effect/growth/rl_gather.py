"""predict-rl under torchrun: every rank's block of prompt effects, and the kept gradients, merged in prompt order.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from sample_effect.engine.vectors import TargetVector
from sample_effect.growth.noise import SpilledRows
from sample_effect.growth.rl_config import NoisePlan
from sample_effect.growth.rl_effects import RLEffects
from sample_effect.growth.trajectory import SimulatedSteps, StepContext
from sample_effect.rollouts.groups import Rollout


def gather_effects(
    eff: RLEffects | None, local: list[list[Rollout]], mine: range, n: int, g: TargetVector, ctx: StepContext,
    plan: NoisePlan, spill_dir: str | os.PathLike | None,
) -> tuple[RLEffects, list[list[Rollout]]]:
    """Every rank's block of prompt effects (and rollouts, kept gradients) merged in prompt order.

    The kept gradients are not gathered as objects: each informative group's row travels alone
    (`_gather_rows`) into every rank's own spill file, so no rank holds more than one at a time.
    """
    from sample_effect.runtime import distributed as dist

    items: dict[int, tuple] = {}
    for j, i in enumerate(mine):
        assert eff is not None
        items[i] = (float(eff.effect[j]), int(eff.n_tokens[j]), bool(eff.zero_variance[j]), float(eff.reward_mean[j]),
                    float(eff.grad_norm[j]), eff.rollout_effect[j], local[j])
    rows = dist.gather_blocks(n, items)
    zero = np.array([r[2] for r in rows], dtype=bool)
    merged = RLEffects(
        ids=[r[6][0].prompt_id for r in rows], effect=np.array([r[0] for r in rows]),
        n_tokens=np.array([r[1] for r in rows], dtype=np.int64), zero_variance=zero,
        reward_mean=np.array([r[3] for r in rows]), grad_norm=np.array([r[4] for r in rows]),
        rollout_effect=[r[5] for r in rows], target=g,
    )
    if plan.hessian or plan.keep_grads:
        mine_rows = None if eff is None else (eff.grads if eff.grads is not None else getattr(eff.updates, "grads", None))
        store = gather_rows(mine_rows, zero, n, ctx, spill_dir)
        if eff is not None:
            eff.release()
        merged.grads = store if plan.keep_grads else None
        merged.updates = SimulatedSteps(store, ctx) if plan.hessian else None
    return merged, [r[6] for r in rows]


def gather_rows(
    mine_rows: Sequence[Mapping[str, torch.Tensor]] | None, zero: np.ndarray, n: int, ctx: StepContext,
    spill_dir: str | os.PathLike | None,
) -> SpilledRows:
    """Every informative group's kept gradient, in prompt order, spilled on every rank: one all-reduce per row
    (the owner contributes the row, the others zeros), so a rank holds one row at a time."""
    from sample_effect.runtime import distributed as dist

    w, me = dist.world_size(), dist.rank()
    owner = np.zeros(n, dtype=np.int64)
    for r in range(w):
        owner[list(dist.block(n, r, w))] = r
    chosen, names, acc = ctx.params, ctx.names, ctx.dtype
    sizes = [chosen[k].numel() for k in names]
    store = SpilledRows(spill_dir)
    at = 0
    for i in np.flatnonzero(~zero):
        if owner[i] == me:
            assert mine_rows is not None
            row = mine_rows[at]
            at += 1
            flat = torch.cat([row[k].reshape(-1).to(acc) for k in names])
            del row
        else:
            flat = torch.zeros(sum(sizes), dtype=acc, device=ctx.device)
        dist.all_reduce_sum_(flat)
        store.append({k: part.view(chosen[k].shape) for k, part in zip(names, flat.split(sizes))})
        del flat
    return store
