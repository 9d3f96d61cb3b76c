"""Predicting RL growth: sample effects of GRPO prompts, and the test-accuracy target.

For RL the training "examples" are the policy's own rollouts (docs/theory.md, "Growth prediction"), so a
prediction starts by sampling: G rollouts per prompt from the checkpoint, rewards, GRPO
advantages. Then, per prompt x,

    g_x = grad of the prompt group's GRPO loss, exactly the loss `train_grpo` minimises on its
          first, on-policy step (`trainers.grpo.grpo_batch_loss`: token-mean over the group's
          completion tokens of -A_i log pi(y_i,t), ratio 1),
    e_x = < U(g_x), G >, U the simulated optimiser update per unit lr (`UpdateConfig.rule.step`,
          with clipping), the same simulation `rank` uses;

a zero-variance group (all rewards equal) has zero advantages, takes no step in the trainer,
and gets e_x = 0. A real GRPO step on a batch S of prompts minimises the token-mean over the
rollouts of its *informative* groups, i.e. sum_x n_x L_x / sum_x n_x with n_x the group's
completion tokens, so its first-order effect per unit lr is the token-weighted mean of the
informative groups' effects (exactly, for SGD). The predicted growth of the target per RL step:

    positive effect = lr * (1 - p_empty) * R,   R = sum_{x informative} n_x e_x / sum_{x informative} n_x,

with p_empty the probability that a batch of B prompts drawn without replacement from the
sampled ones holds no informative group (the trainer then takes no step); R is the ratio
estimator of the batch's token-weighted mean (exact for a batch holding every sampled prompt,
bias O(1/B) otherwise). The noise effect has two parts. The second-order term is
(lr^2 / 2b) tr(H_T Sigma_w) for a loss target (Hessian-vector products from
`growth.target_loss_hvp`, SGD only, as in `growth`), with b = B (1 - zero-variance fraction) the
expected informative groups per batch and Sigma_w the covariance of the token-weighted centred
updates (n_x / mean n)(d_x - dbar_w), the delta-method covariance of the batch's weighted mean;
it is 0 for a fixed direction and not estimated for an accuracy target. The first-order batch
term exists when the update is not linear in the gradient (Adam, clipping): the trainer steps
on U(clip(gbar_S)) for the batch S, not on the mean of the per-prompt U(clip(g_x)), so the term
is lr E_S <U(clip(gbar_S)), G> - positive effect, over every batch of B prompts when there are
few, else over seeded random draws (`batch_step_effects`). A percentile bootstrap over prompts
gives the 95% interval of the positive effect.

Memory: the noise and second-order terms need every informative group's dense gradient (batches
are drawn at random, and the step on a batch is not linear in its gradients for Adam or
clipping). They are spilled to an anonymous temporary file (`noise.SpilledRows`) as they are
computed and read back one at a time: the weighted mean update is a running sum, the centred
updates of the Hessian term are formed one by one in a second pass over the file, and a batch's
mean gradient is summed row by row. Resident memory is flat in the number of prompts (a few
dense vectors beyond the positive effect's own); the disk holds one gradient per informative
prompt (docs/scaling.md, "predict-rl memory").

The accuracy target (`targets.AccuracyTarget`) is G = grad of the test accuracy, estimated by
REINFORCE from completions sampled on test prompts (`accuracy_target_vector`).
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd
import torch

from sample_effect.engine.core import ComputeConfig
from sample_effect.engine.vectors import TargetVector
from sample_effect.errors import SampleEffectError
from sample_effect.growth.rl_batches import mean_batch_update
from sample_effect.growth.rl_config import NoisePlan, RLPredictConfig, noise_plan
from sample_effect.growth.rl_effects import RLEffects, rl_prompt_effects
from sample_effect.growth.rl_gather import gather_effects
from sample_effect.growth.rl_results import NoiseTerm, RLGrowth
from sample_effect.growth.rl_stats import (
    batch_draws,
    bootstrap_positive_effect,
    empty_batch_probability,
    positive_effect_per_lr,
)
from sample_effect.growth.rl_terms import (
    batch_noise_term,
    hessian_noise_term,
    replay_term,
    second_order_term,
)
from sample_effect.growth.rl_warnings import (
    RLPredictionWarning,
    prompts_per_step_warning,
    zero_variance_warning,
)
from sample_effect.growth.trajectory import StepContext
from sample_effect.models.loading import select_parameters
from sample_effect.rollouts.groups import Rollout, completion_tokens, sample_groups
from sample_effect.rollouts.prompts import RLPrompt
from sample_effect.targets.core import (
    Target,
    resolve_target,
    resolve_target_distributed,
)
from sample_effect.update.optim import OptimizerState, UpdateConfig


@dataclass
class RLPrediction:
    """One checkpoint's prediction: the typed growth, the per-prompt effects and the rollouts behind them."""

    growth: RLGrowth
    effects: RLEffects
    groups: list[list[Rollout]]
    step: dict[str, torch.Tensor] | None = None  # E_S[U(clip(gbar_S))] per unit lr, with `expected_step`

    @property
    def record(self) -> dict[str, Any]:
        """The JSON record of the prediction, `growth.to_dict()` (a fresh dict at each access)."""
        return self.growth.to_dict()

    def ranking(self) -> pd.DataFrame:
        """Prompts ranked by RL effect (rank 1 = the prompt whose GRPO step moves the target most)."""
        return self.effects.table()

    def rollout_rows(self) -> list[dict[str, Any]]:
        """One dict per rollout: prompt id, index, reward, advantage, completion tokens, SGD share, text."""
        rows = []
        for group, shares in zip(self.groups, self.effects.rollout_effect):
            for i, (r, s) in enumerate(zip(group, shares)):
                rows.append({
                    "prompt_id": r.prompt_id, "index": i, "reward": r.reward, "advantage": r.advantage,
                    "n_tokens": completion_tokens(r), "effect_sgd": float(s), "finished": r.finished,
                    "completion": r.completion,
                })
        return rows


def predict_rl(
    model: torch.nn.Module,
    tokenizer: Any,
    prompts: Sequence[RLPrompt],
    reward: Callable[..., float] | str,
    target: Target | TargetVector,
    update: UpdateConfig | None = None,
    config: RLPredictConfig | None = None,
    *,
    params: str | Mapping[str, torch.Tensor] | None = None,
    state: OptimizerState | None = None,
    groups: Sequence[Sequence[Rollout]] | None = None,
    **settings: Any,
) -> RLPrediction:
    """Predict the per-step growth of `target` under GRPO from this checkpoint, and rank the prompts.

    Samples `config.group_size` rollouts per prompt (unless `groups` are given), computes each
    prompt's effect, the positive effect per step for batches of `prompts_per_step` prompts with a
    bootstrap 95% interval over prompts, and the noise effect: the second-order Hessian term (loss
    target and SGD; 0 for a direction) plus, for a non-linear update (Adam, clipping), the
    first-order batch term over `noise_draws` batch draws (every batch when there are fewer).
    For a loss target, `curvature_draws` batches (0: off) also give the whole second-order term
    (lr^2 / 2) E_S[U_S^T H_T U_S] and `growth_rate_second_order`, which says where the first-order
    picture stops holding. `params` is a regex over parameter names or the chosen parameters.
    `state` is the optimiser state the simulated steps start from (None: a fresh optimiser).
    Keyword `settings` override fields of `config` (e.g. `group_size=4`, `compute=...`). Memory does not grow with
    the number of prompts: the noise terms' per-prompt gradients are spilled to `spill_dir`.
    A `prompts_per_step` above the number of prompts is clamped to it, and a sample where more than
    half of the groups (or all) have zero reward variance is flagged; both with an
    `RLPredictionWarning` and in `growth.warnings` (the record's `warnings`).
    """
    t0 = time.perf_counter()
    unknown = sorted(set(settings) - set(RLPredictConfig.__dataclass_fields__))
    if unknown:
        raise SampleEffectError(f"predict_rl got unknown settings {unknown}; RLPredictConfig has "
                                f"{', '.join(RLPredictConfig.__dataclass_fields__)}")
    cfg = replace(config or RLPredictConfig(), **settings).validate(sampling=groups is None)
    cfg = replace(cfg, compute=cfg.compute or ComputeConfig())
    update = (update or UpdateConfig()).validate()
    target = Target.coerce(target)
    if target.uses_scored_examples:
        raise SampleEffectError("a 'self' target has no meaning for RL prompts; use a loss, direction or accuracy target")
    chosen = select_parameters(model, params) if params is None or isinstance(params, str) else dict(params)
    ctx = StepContext.build(chosen, update, state)
    n_prompts = len(groups) if groups is not None else len(prompts)
    if n_prompts == 0:
        raise SampleEffectError("no RL prompts")
    notes = [m for m in [prompts_per_step_warning(cfg.prompts_per_step, n_prompts)] if m]
    for m in notes:  # before the sampling, which can take minutes
        warnings.warn(m, RLPredictionWarning, stacklevel=2)
    requested = cfg.prompts_per_step
    cfg = replace(cfg, prompts_per_step=min(cfg.prompts_per_step, n_prompts))  # the same numbers: batches clamp too
    plan = noise_plan(target, ctx, cfg, n_prompts)
    sampled = groups is None
    g, eff, groups = _score_prompts(model, tokenizer, prompts, reward, target, ctx, cfg, groups, plan)
    zero_note = zero_variance_warning(int(eff.zero_variance.sum()), n_prompts, int(max(len(gr) for gr in groups)),
                                      cfg.temperature if sampled else None)
    if zero_note:
        warnings.warn(zero_note, RLPredictionWarning, stacklevel=2)
        notes.append(zero_note)
    step = None
    try:
        growth = _growth(model, ctx, eff, groups, target, g, cfg, plan, requested)
        if plan.step:  # the same batches as the batch term, so lr <step, G> is its growth
            step = mean_batch_update(eff, ctx, batch_draws(len(eff.effect), cfg.prompts_per_step, cfg.noise_draws, cfg.seed)[0])
    finally:
        eff.release()  # the spilled gradients are large; the growth holds what they gave
    growth.warnings = notes
    growth.temperature = cfg.temperature if sampled else None  # None: the rollouts were given, not sampled here
    growth.max_new_tokens = cfg.max_new_tokens if sampled else None
    growth.seconds = time.perf_counter() - t0
    return RLPrediction(growth=growth, effects=eff, groups=groups, step=step)


def _score_prompts(
    model: torch.nn.Module, tokenizer: Any, prompts: Sequence[RLPrompt], reward: Callable[..., float] | str,
    target: Target, ctx: StepContext, cfg: RLPredictConfig, groups: Sequence[Sequence[Rollout]] | None,
    plan: NoisePlan,
) -> tuple[TargetVector, RLEffects, list[list[Rollout]]]:
    """Resolve G, sample the groups (this rank's block under torchrun) and compute every prompt's effect."""
    from sample_effect.runtime import distributed as dist

    chosen, compute = ctx.params, cfg.compute
    if dist.is_distributed():
        dist.init(ctx.device)
    if dist.active():
        g = resolve_target_distributed(target, model, chosen, [], compute)
    else:
        g = resolve_target(target, model, chosen, [], compute)
    n_prompts = len(groups) if groups is not None else len(prompts)
    mine = dist.block(n_prompts) if dist.active() else range(n_prompts)
    if groups is None:
        local = sample_groups(model, tokenizer, [prompts[i] for i in mine], reward, cfg.group_size, cfg.temperature,
                              cfg.max_new_tokens, cfg.seed, compute.progress, first_index=mine.start) if len(mine) else []
    else:
        local = [list(groups[i]) for i in mine]
    eff = rl_prompt_effects(model, ctx, local, g, cfg.clip_eps, keep_updates=plan.hessian, keep_grads=plan.keep_grads,
                            compute=compute, spill_dir=cfg.spill_dir) if local else None
    if dist.active():
        eff, local = gather_effects(eff, local, mine, n_prompts, g, ctx, plan, cfg.spill_dir)
    assert eff is not None
    return g, eff, local


def _growth(
    model: torch.nn.Module, ctx: StepContext, eff: RLEffects, groups: Sequence[Sequence[Rollout]],
    target: Target, g: TargetVector, cfg: RLPredictConfig, plan: NoisePlan, requested: int,
) -> RLGrowth:
    """The prediction: positive effect with its interval, the noise and second-order terms, the growth (`requested`: the
    prompts per step asked for, before the clamp). The run's warnings, sampling settings and time are left to the caller."""
    n = len(eff.effect)
    n_zero = int(eff.zero_variance.sum())
    batch = min(cfg.prompts_per_step, n)
    update = ctx.update
    lr = update.lr
    per_lr = positive_effect_per_lr(eff.effect, eff.n_tokens, eff.zero_variance, cfg.prompts_per_step)
    boot = bootstrap_positive_effect(eff.effect, eff.n_tokens, eff.zero_variance, cfg.prompts_per_step, cfg.n_boot, cfg.seed)
    ci = (lr * float(np.percentile(boot, 2.5)), lr * float(np.percentile(boot, 97.5)))
    b_eff = batch * (n - n_zero) / n
    positive = lr * per_lr
    hess = hessian_noise_term(model, ctx, eff, target, plan, b_eff)
    bat = batch_noise_term(ctx, eff, plan, cfg, positive)
    terms: list[NoiseTerm] = [t for t in (hess, bat) if t.effect is not None]
    noise_effect = sum(t.effect for t in terms if t.effect is not None) if terms else None
    if hess.effect is None and not plan.nonlinear:  # the only term that could be non-zero was not estimated
        noise_effect = None
    ses = [t.stderr for t in terms if t.stderr is not None and math.isfinite(t.stderr)]
    second = second_order_term(model, ctx, eff, target, plan, cfg)
    replay = replay_term(ctx, eff, plan, cfg)
    if second.effect is not None:  # first order (exact expectation over batches) + all of the second order
        second.growth = positive + (bat.effect or 0.0) + second.effect
    if bat.growth_stderr is not None:  # non-linear update: the interval of the whole batch-step mean
        half = 1.96 * bat.growth_stderr
        growth_ci = (positive + (noise_effect or 0.0) - half, positive + (noise_effect or 0.0) + half)
        ci_method = "U-statistic standard error over prompts of the simulated batch step (normal, 95%)"
    else:
        growth_ci = (ci[0] + (noise_effect or 0.0), ci[1] + (noise_effect or 0.0))
        ci_method = "bootstrap of the positive effect over prompts, shifted by the noise point estimate"
    n_rollouts = int(sum(len(gr) for gr in groups))
    return RLGrowth(
        target=g.kind, target_norm=g.norm(), target_loss=g.target_loss, target_stats=dict(g.stats),
        n_prompts=n, group_size=int(max(len(gr) for gr in groups)), n_rollouts=n_rollouts,
        reward_mean=float(np.mean([r.reward for gr in groups for r in gr])),
        mean_completion_tokens=float(eff.n_tokens.sum() / max(1, n_rollouts)),
        zero_variance_groups=n_zero, zero_variance_fraction=n_zero / n,
        optimizer=update.optimizer, lr=lr, clip=update.clip,
        prompts_per_step=cfg.prompts_per_step, prompts_per_step_requested=requested, informative_per_step=b_eff,
        empty_batch_probability=empty_batch_probability(n, n_zero, cfg.prompts_per_step),
        effect_per_step=per_lr, effect_token_weighted=eff.step_effect(),
        effect_mean=float(eff.effect.mean()),
        effect_mean_stderr=float(eff.effect.std(ddof=1) / math.sqrt(n)) if n > 1 else None,
        positive_effect=positive, positive_effect_ci95=ci,
        noise_effect=noise_effect, noise_effect_stderr=math.hypot(*ses) if ses else None,
        hessian=hess, batch=bat, second_order=second,
        growth_rate=positive + (noise_effect or 0.0), growth_rate_ci95=growth_ci,
        growth_rate_ci_method=ci_method, n_bootstrap=cfg.n_boot, seed=cfg.seed,
        replay=replay,
    )
