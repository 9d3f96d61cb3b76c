"""Per-prompt effects of one GRPO step: e_x = <U(g_x), G> per prompt group, by the engine or one backward per group.

See `growth.rl` for the estimator; this module computes the per-prompt effects it starts from.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from sample_effect.engine.core import ComputeConfig
from sample_effect.engine.vectors import TargetVector
from sample_effect.errors import SampleEffectError
from sample_effect.growth.noise import SpilledRows
from sample_effect.growth.trajectory import SimulatedSteps, StepContext, vector_dot
from sample_effect.objectives.base import GRPOObjective, grpo_example, rollout_example
from sample_effect.rollouts.groups import Rollout, completion_tokens, set_advantages
from sample_effect.scoring.effects import compute_effects
from sample_effect.training.grpo import grpo_batch_loss
from sample_effect.update.optim import UpdateConfig


@dataclass
class RLEffects:
    """Per-prompt effects of one GRPO step toward a target (per unit lr), in prompt order.

    effect: e_x = <U(g_x), G> (0 for a zero-variance group); n_tokens: the group's completion
    tokens (its weight in the trainer's token mean); rollout_effect[x][i]: -<gradient of rollout
    i's term of the group loss, G>, the rollout's share of the SGD effect (they sum to
    -<g_x, G>, which is e_x for SGD without clipping or weight decay); updates: U(g_x) of the
    informative groups when kept (for the Hessian noise term); grads: the raw g_x of the
    informative groups when kept (for the batch noise term, `batch_step_effects`). Kept ones are
    sequences read one item at a time: `rl_prompt_effects` spills the gradients to disk
    (`noise.SpilledRows`) and `updates` recomputes U(g_x) from them when read; plain lists work too.
    """

    ids: list[str]
    effect: np.ndarray
    n_tokens: np.ndarray
    zero_variance: np.ndarray
    reward_mean: np.ndarray
    grad_norm: np.ndarray
    rollout_effect: list[np.ndarray]
    target: TargetVector
    updates: Sequence[dict[str, torch.Tensor]] | None = None
    grads: Sequence[dict[str, torch.Tensor]] | None = None

    def release(self) -> None:
        """Drop the kept gradients and updates (and delete their spill file)."""
        store = self.grads if isinstance(self.grads, SpilledRows) else getattr(self.updates, "grads", None)
        if isinstance(store, SpilledRows):
            store.close()
        self.updates = self.grads = None

    def step_effect(self) -> float:
        """R: the token-weighted mean effect of the informative groups (the trainer's batch weighting)."""
        return step_effect(self.effect, self.n_tokens, self.zero_variance)

    def table(self) -> pd.DataFrame:
        """One row per prompt, ranked by effect (rank 1 = largest; ties by input order)."""
        from sample_effect.scoring.result import rank_table

        df = pd.DataFrame({
            "id": self.ids,
            "effect": self.effect,
            "reward_mean": self.reward_mean,
            "zero_variance": self.zero_variance,
            "n_tokens": self.n_tokens,
            "grad_norm": self.grad_norm,
        })
        return rank_table(df)


def step_effect(effect: np.ndarray, n_tokens: np.ndarray, zero_variance: np.ndarray) -> float:
    """sum n_x e_x / sum n_x over the informative groups (0 when there is none)."""
    w = np.where(zero_variance, 0.0, n_tokens.astype(np.float64))
    den = w.sum()
    return float((w * effect).sum() / den) if den > 0 else 0.0


def rl_prompt_effects(
    model: torch.nn.Module,
    ctx: StepContext,
    groups: Sequence[Sequence[Rollout]],
    target: TargetVector,
    clip_eps: float = 0.2,
    keep_updates: bool = False,
    rollout_effects: bool = True,
    keep_grads: bool = False,
    compute: ComputeConfig | None = None,
    spill_dir: str | os.PathLike | None = None,
) -> RLEffects:
    """e_x for every prompt group: gradient of the group's GRPO loss, simulated optimiser step, dot with G.

    The loss is `grpo_batch_loss` on the group alone, on-policy (ratio 1); advantages are
    (re)set from the rewards with `set_advantages`, as the trainer sets them. Per-rollout shares
    are -<g_i, G>, g_i rollout i's part of the group gradient (the loss is linear in the advantages).
    Unless `keep_updates` / `keep_grads` ask for the dense U(g_x) / g_x of the informative groups
    (the noise terms use them), the groups go through the engine's fast paths as examples of the
    GRPO objective (`compute_effects`: ghost factors in batched backwards, Adam one layer at a
    time, under `compute`'s memory budget); otherwise one backward per group, each g_x written to
    a temporary file in `spill_dir` (`noise.SpilledRows`) as it is computed, so memory does not
    grow with the number of groups; the kept updates are recomputed from the file when read.
    `ctx` holds the parameters, the update and the optimiser state; `compute.progress` shows a bar.
    """
    ctx.update.validate()
    names = ctx.names
    if not names:
        raise SampleEffectError("no parameters to score")
    missing = [n for n in names if n not in target.vector]
    if missing:
        raise SampleEffectError(f"the target has no entry for parameter '{missing[0]}'")
    if not target.all_finite(names):
        raise SampleEffectError(f"the target direction '{target.kind}' contains NaN or Inf; nothing can be scored against it")
    if not (keep_updates or keep_grads):
        return _engine_prompt_effects(model, ctx, groups, target, rollout_effects, compute)
    plist = [ctx.params[n] for n in names]
    acc = ctx.dtype
    n = len(groups)
    effect = np.zeros(n)
    n_tokens = np.zeros(n, dtype=np.int64)
    zero = np.zeros(n, dtype=bool)
    reward_mean = np.zeros(n)
    gnorm = np.zeros(n)
    shares: list[np.ndarray] = []
    store = SpilledRows(spill_dir)
    progress = (compute or ComputeConfig()).progress
    for k, group in enumerate(tqdm(groups, desc="GRPO effects", unit="prompt", disable=not progress, leave=False)):
        if not group:
            raise SampleEffectError(f"prompt group {k} has no rollouts")
        zero[k] = set_advantages(group)
        n_tokens[k] = sum(completion_tokens(r) for r in group)
        reward_mean[k] = float(np.mean([r.reward for r in group]))
        if zero[k]:
            shares.append(np.zeros(len(group)))
            continue
        adv = torch.tensor([r.advantage for r in group], dtype=torch.float64, requires_grad=rollout_effects)
        loss = grpo_batch_loss(model, group, None, adv, clip_eps)
        grads = torch.autograd.grad(loss, plist, create_graph=rollout_effects, allow_unused=True)
        grads = tuple(torch.zeros_like(p) if g is None else g for g, p in zip(grads, plist))
        if rollout_effects:
            dot = sum((g.to(acc) * target.vector[nm]).sum() for g, nm in zip(grads, names))
            (d_adv,) = torch.autograd.grad(dot, adv, allow_unused=True)
            d_adv = torch.zeros_like(adv) if d_adv is None else d_adv
            shares.append(-(adv.detach() * d_adv.detach()).cpu().numpy())
        else:
            shares.append(np.full(len(group), np.nan))
        g = {nm: gr.detach().to(acc) for nm, gr in zip(names, grads)}
        del grads
        store.append(g)
        d, gnorm[k] = ctx.step(g)
        effect[k] = vector_dot(d, target.vector)
        del g, d
    return RLEffects(
        ids=[g[0].prompt_id for g in groups], effect=effect, n_tokens=n_tokens, zero_variance=zero,
        reward_mean=reward_mean, grad_norm=gnorm, rollout_effect=shares, target=target,
        updates=SimulatedSteps(store, ctx) if keep_updates else None,
        grads=store if keep_grads else None,
    )


def _engine_prompt_effects(
    model: torch.nn.Module, ctx: StepContext, groups: Sequence[Sequence[Rollout]], target: TargetVector,
    rollout_effects: bool, compute: ComputeConfig | None,
) -> RLEffects:
    """`rl_prompt_effects` through the engine: informative groups as GRPO-objective examples, scored in batches."""
    compute = replace(compute or ComputeConfig(), grad_norms=True)
    n = len(groups)
    effect, gnorm, reward_mean = np.zeros(n), np.zeros(n), np.zeros(n)
    n_tokens = np.zeros(n, dtype=np.int64)
    zero = np.zeros(n, dtype=bool)
    for k, group in enumerate(groups):
        if not group:
            raise SampleEffectError(f"prompt group {k} has no rollouts")
        zero[k] = set_advantages(group)
        n_tokens[k] = sum(completion_tokens(r) for r in group)
        reward_mean[k] = float(np.mean([r.reward for r in group]))
    live = [k for k in range(n) if not zero[k]]
    shares = [np.zeros(len(g)) if zero[k] else np.full(len(g), np.nan) for k, g in enumerate(groups)]
    if live:
        objective = GRPOObjective()
        examples = [grpo_example(f"{groups[k][0].prompt_id}#{k}", [r.ids for r in groups[k]], [r.start for r in groups[k]],
                                 [r.advantage for r in groups[k]]) for k in live]
        res = compute_effects(model, ctx.params, examples, target, ctx.update, ctx.state, compute, objective=objective)
        effect[live], gnorm[live] = res.effect, res.grad_norm
        if rollout_effects:  # -<g_i, G> per rollout: the SGD effect of each rollout as its own example
            per = [rollout_example(f"{ex.id}/{i}", [s], [r], [w]) for ex in examples
                   for i, (s, r, w) in enumerate(zip(ex.sequences, ex.response_starts, ex.weights or []))]
            sgd = compute_effects(model, ctx.params, per, target, UpdateConfig("sgd"), None, replace(compute, grad_norms=False),
                                  objective=objective).effect
            at = 0
            for k in live:
                shares[k] = sgd[at : at + len(groups[k])]
                at += len(groups[k])
    return RLEffects(
        ids=[g[0].prompt_id for g in groups], effect=effect, n_tokens=n_tokens, zero_variance=zero,
        reward_mean=reward_mean, grad_norm=gnorm, rollout_effect=shares, target=target,
    )
