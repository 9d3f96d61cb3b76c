"""The terms of predict-rl's record beside the positive effect: Hessian noise, batch noise, second order, replay.

Each returns the term's numbers with a note saying how it was estimated, or why it was not.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from sample_effect.growth.noise import finite_population
from sample_effect.growth.rl_batches import batch_step_effects, replay_path
from sample_effect.growth.rl_config import NoisePlan, RLPredictConfig
from sample_effect.growth.rl_curvature import rl_noise_effect, second_order_effects
from sample_effect.growth.rl_effects import RLEffects
from sample_effect.growth.rl_results import BatchTerm, HessianTerm, RLReplay, SecondOrderTerm
from sample_effect.growth.rl_stats import batch_draws, batch_growth_stderr
from sample_effect.growth.trajectory import StepContext
from sample_effect.targets.core import (
    Target,
)


def replay_term(ctx: StepContext, eff: RLEffects, plan: NoisePlan, cfg: RLPredictConfig) -> RLReplay | None:
    """`replay_path` summarised: mean per-step change, the total with its standard error, and the runs' spread."""
    if not cfg.horizon_lrs:
        return None
    if not plan.replay:
        return RLReplay(note=f"not computed: {plan.memory_note}")
    steps = len(cfg.horizon_lrs)
    if not (~eff.zero_variance).any():
        paths = np.zeros((cfg.replay_runs, steps))
    else:
        paths = replay_path(eff, ctx, cfg.horizon_lrs, cfg.prompts_per_step, cfg.replay_runs, cfg.seed)
    totals = paths.sum(1)
    return RLReplay(
        per_step=paths.mean(0).tolist(), total=float(totals.mean()),
        total_stderr=float(totals.std(ddof=1) / math.sqrt(len(totals))) if len(totals) > 1 else None,
        total_runs_95=[float(x) for x in np.percentile(totals, [2.5, 97.5])], runs=cfg.replay_runs,
        note="frozen start gradients and weights, optimiser state carried; the spread is over batch orders only",
    )


def second_order_term(
    model: torch.nn.Module, ctx: StepContext, eff: RLEffects, target: Target, plan: NoisePlan, cfg: RLPredictConfig,
) -> SecondOrderTerm:
    """(lr^2 / 2) E_S[U_S^T H_T U_S] over `cfg.curvature_draws` batches (every batch when there are fewer), for a loss target."""
    lr, memory_note = ctx.update.lr, plan.memory_note
    examples = target.hessian_examples()
    if not plan.second or examples is None:
        why = "off (--curvature-draws 0 or --no-noise)" if examples is not None else "needs a --target-data loss target"
        why = memory_note if memory_note and examples is not None else why
        return SecondOrderTerm(note=why)
    if not (~eff.zero_variance).any():
        return SecondOrderTerm(effect=0.0, stderr=0.0, note="0, no prompt has reward variance")
    batches, exact = batch_draws(len(eff.effect), cfg.prompts_per_step, cfg.curvature_draws, cfg.seed + 1)
    vals = lr * lr * second_order_effects(model, ctx, eff, batches, examples)
    se = 0.0 if exact else (float(vals.std(ddof=1) / math.sqrt(len(vals))) if len(vals) > 1 else float("nan"))
    how = f"every one of the {len(vals)} batches" if exact else f"{len(vals)} random batches"
    return SecondOrderTerm(effect=float(vals.mean()), stderr=se, draws=len(vals),
                           note=f"(lr^2 / 2) U_S^T H_T U_S averaged over {how}; growth_rate_second_order = positive + "
                                "first-order batch term + this (for SGD it contains the Hessian noise term)")


def hessian_noise_term(
    model: torch.nn.Module, ctx: StepContext, eff: RLEffects, target: Target, plan: NoisePlan, b_eff: float,
) -> HessianTerm:
    """(lr^2 / 2b) tr(H_T Sigma_w) where it is defined and estimated; else None (or 0) with the reason."""
    lr, memory_note = ctx.update.lr, plan.memory_note
    m = int((~eff.zero_variance).sum())
    if target.linear_in_theta:
        return HessianTerm(effect=0.0, note="0, a fixed direction is linear in theta")
    examples = target.hessian_examples()
    if examples is None:
        return HessianTerm(note=f"not estimated for {target.label} (its Hessian is not available)")
    if not plan.noise:
        return HessianTerm(note=memory_note or "not requested (--no-noise)")
    if not ctx.update.rule.is_linear:
        return HessianTerm(note="not estimated for Adam (O(lr^2); the first-order batch term dominates at small lr)")
    if m < 2:
        return HessianTerm(effect=0.0 if m == 0 else None, note="fewer than 2 prompts with reward variance")
    ne = rl_noise_effect(model, ctx.params, eff, examples)
    scale = lr * lr / (2 * b_eff) * finite_population(b_eff, m)
    return HessianTerm(effect=scale * ne.trace, stderr=scale * ne.stderr, trace=ne.trace,
                       note="(lr^2 / 2b) tr(H_T Sigma_w) (m - b) / m, b = prompts_per_step * (1 - zero_variance_fraction), "
                            "m = prompts with reward variance")


def batch_noise_term(ctx: StepContext, eff: RLEffects, plan: NoisePlan, cfg: RLPredictConfig, positive: float) -> BatchTerm:
    """lr E_S <U(clip(gbar_S)), G> - positive effect, over `cfg.noise_draws` batch draws; 0 for a linear update."""
    lr, memory_note, prompts_per_step = ctx.update.lr, plan.memory_note, cfg.prompts_per_step
    if not plan.nonlinear:
        return BatchTerm(effect=0.0, note="0, SGD without clipping is linear in the gradient")
    if not plan.noise:
        return BatchTerm(note=memory_note or "not requested (--no-noise)")
    if not (~eff.zero_variance).any():
        return BatchTerm(effect=0.0, note="0, no prompt has reward variance")
    n = len(eff.effect)
    batches, exact = batch_draws(n, prompts_per_step, cfg.noise_draws, cfg.seed)
    vals = lr * batch_step_effects(eff, ctx, batches)
    se = 0.0 if exact else (float(vals.std(ddof=1) / math.sqrt(len(vals))) if len(vals) > 1 else float("nan"))
    how = f"every one of the {len(vals)} batches" if exact else f"{len(vals)} random batches"
    return BatchTerm(effect=float(vals.mean()) - positive, stderr=se, exact=exact, draws=len(vals),
                     growth_stderr=batch_growth_stderr(vals, batches, n, min(prompts_per_step, n)),
                     note=f"E over {how} of the clipped, simulated batch step's effect, minus the positive effect")
