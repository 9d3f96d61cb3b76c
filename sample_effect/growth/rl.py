"""Predicting RL growth: sample effects of GRPO prompts, and the test-accuracy target.

For RL the training "examples" are the policy's own rollouts (DESIGN.md section 1), so a
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

import logging
import math
import os
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from sample_effect.data.examples import TokenizedExample
from sample_effect.engine.core import ComputeConfig
from sample_effect.engine.vectors import TargetVector
from sample_effect.errors import ConfigError, FieldText, SampleEffectError, field_text
from sample_effect.growth.noise import (
    CentredRows,
    NoiseEffect,
    SpilledRows,
    finite_population,
    spill_space_note,
    target_loss_hvp,
    trace_from_centred,
)
from sample_effect.models.loading import accumulation_dtype, select_parameters
from sample_effect.objectives.base import GRPOObjective, grpo_example, rollout_example
from sample_effect.rollouts.groups import completion_tokens, sample_groups
from sample_effect.scoring.effects import compute_effects
from sample_effect.targets.core import (
    AccuracyTarget,
    DirectionTarget,
    LossTarget,
    SelfTarget,
    Target,
    resolve_target,
    resolve_target_distributed,
)
from sample_effect.training.grpo import (
    RLPrompt,
    Rollout,
    grpo_batch_loss,
    set_advantages,
)
from sample_effect.update.optim import (
    OptimizerState,
    UpdateConfig,
    clip_coefficients,
)
from sample_effect.update.rules import ParamState

log = logging.getLogger("sample_effect")

# ---------------------------------------------------------------------------------------------
# Per-prompt effects of one GRPO step
# ---------------------------------------------------------------------------------------------


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


def simulated_step(
    g: Mapping[str, torch.Tensor],
    params: Mapping[str, torch.Tensor],
    update: UpdateConfig,
    hypers: Mapping[str, Any],
    state: OptimizerState,
) -> tuple[dict[str, torch.Tensor], float]:
    """U(clip(g)) per unit lr for one gradient (a dict over parameters) from `state`, and ||g||.

    Clipping is by the gradient's own norm over all its parameters, as `clip_grad_norm_` clips
    a batch: used for one prompt group (the sample effect) and for a batch's mean gradient.
    """
    step, norm, _ = stepped_with_state(g, params, update, hypers, {nm: state.param_state(nm) for nm in g})
    return step, norm


def stepped_with_state(
    g: Mapping[str, torch.Tensor],
    params: Mapping[str, torch.Tensor],
    update: UpdateConfig,
    hypers: Mapping[str, Any],
    states: Mapping[str, ParamState],
) -> tuple[dict[str, torch.Tensor], float, dict[str, ParamState]]:
    """`simulated_step` from explicit per-parameter states, also returning the states after the step.

    (U(clip(g)) per unit lr, ||g||, the new states): what a run of several simulated steps
    carries from one step to the next (`replay_path`), as the trainer's optimiser does.
    """
    sq = sum((t.double() ** 2).sum() for t in g.values())
    coef = float(clip_coefficients(sq.reshape(1), update.clip)[0])
    step, after = {}, {}
    for nm, t in g.items():
        d, after[nm] = update.rule.step_with_state(
            (t * coef if update.clip is not None else t).unsqueeze(0), params[nm].detach().to(t.dtype), hypers[nm],
            states[nm],
        )
        step[nm] = d[0]
    return step, float(sq.sqrt()), after


class SimulatedSteps(Sequence[dict[str, torch.Tensor]]):
    """U(clip(g_i)) per unit lr of each gradient of `grads`, computed when item i is read (one at a time).

    The step is a deterministic function of the gradient, so reading item i twice gives the same
    tensors, and the dense updates need no storage of their own.
    """

    def __init__(self, grads: Sequence[Mapping[str, torch.Tensor]], params: Mapping[str, torch.Tensor],
                 update: UpdateConfig, hypers: Mapping[str, Any], state: OptimizerState) -> None:
        self.grads, self.params, self.update, self.hypers, self.state = grads, params, update, hypers, state

    def __len__(self) -> int:
        return len(self.grads)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:  # type: ignore[override]
        return simulated_step(self.grads[i], self.params, self.update, self.hypers, self.state)[0]


def _dot(d: Mapping[str, torch.Tensor], vector: Mapping[str, torch.Tensor]) -> float:
    """<d, vector> over d's parameters, accumulated in d's dtype."""
    return sum(float(torch.dot(v.flatten(), vector[nm].to(v.dtype).flatten())) for nm, v in d.items())


def rl_prompt_effects(
    model: torch.nn.Module,
    params: Mapping[str, torch.Tensor],
    groups: Sequence[Sequence[Rollout]],
    target: TargetVector,
    update: UpdateConfig,
    state: OptimizerState | None = None,
    clip_eps: float = 0.2,
    keep_updates: bool = False,
    rollout_effects: bool = True,
    progress: bool = True,
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
    """
    update.validate()
    state = state or OptimizerState()
    names = list(params)
    if not names:
        raise SampleEffectError("no parameters to score")
    missing = [n for n in names if n not in target.vector]
    if missing:
        raise SampleEffectError(f"the target has no entry for parameter '{missing[0]}'")
    if not target.all_finite(names):
        raise SampleEffectError(f"the target direction '{target.kind}' contains NaN or Inf; nothing can be scored against it")
    if not (keep_updates or keep_grads):
        return _engine_prompt_effects(model, params, groups, target, update, state, rollout_effects, progress, compute)
    plist = [params[n] for n in names]
    acc = accumulation_dtype(plist[0].dtype)
    hypers = {n: state.hyper(n, update) for n in names}
    n = len(groups)
    effect = np.zeros(n)
    n_tokens = np.zeros(n, dtype=np.int64)
    zero = np.zeros(n, dtype=bool)
    reward_mean = np.zeros(n)
    gnorm = np.zeros(n)
    shares: list[np.ndarray] = []
    store = SpilledRows(spill_dir)
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
        d, gnorm[k] = simulated_step(g, params, update, hypers, state)
        effect[k] = _dot(d, target.vector)
        del g, d
    return RLEffects(
        ids=[g[0].prompt_id for g in groups], effect=effect, n_tokens=n_tokens, zero_variance=zero,
        reward_mean=reward_mean, grad_norm=gnorm, rollout_effect=shares, target=target,
        updates=SimulatedSteps(store, params, update, hypers, state) if keep_updates else None,
        grads=store if keep_grads else None,
    )


def _engine_prompt_effects(  # type: ignore[no-untyped-def]
    model, params, groups, target: TargetVector, update: UpdateConfig, state: OptimizerState, rollout_effects: bool,
    progress: bool, compute: ComputeConfig | None,
) -> RLEffects:
    """`rl_prompt_effects` through the engine: informative groups as GRPO-objective examples, scored in batches."""
    compute = replace(compute or ComputeConfig(), progress=progress, grad_norms=True)
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
        res = compute_effects(model, params, examples, target, update, state, compute, objective=objective)
        effect[live], gnorm[live] = res.effect, res.grad_norm
        if rollout_effects:  # -<g_i, G> per rollout: the SGD effect of each rollout as its own example
            per = [rollout_example(f"{ex.id}/{i}", [s], [r], [w]) for ex in examples
                   for i, (s, r, w) in enumerate(zip(ex.sequences, ex.response_starts, ex.weights or []))]
            sgd = compute_effects(model, params, per, target, UpdateConfig("sgd"), None, replace(compute, grad_norms=False),
                                  objective=objective).effect
            at = 0
            for k in live:
                shares[k] = sgd[at : at + len(groups[k])]
                at += len(groups[k])
    return RLEffects(
        ids=[g[0].prompt_id for g in groups], effect=effect, n_tokens=n_tokens, zero_variance=zero,
        reward_mean=reward_mean, grad_norm=gnorm, rollout_effect=shares, target=target,
    )


# ---------------------------------------------------------------------------------------------
# Growth-rate prediction: positive effect with a bootstrap interval, noise effect
# ---------------------------------------------------------------------------------------------


def empty_batch_probability(n_prompts: int, n_zero: int, batch: int) -> float:
    """P(a batch of `batch` prompts drawn without replacement holds only zero-variance groups).

    A batch larger than the pool is taken as the whole pool.
    """
    b = min(batch, n_prompts)
    if n_zero < b:
        return 0.0
    return math.comb(n_zero, b) / math.comb(n_prompts, b)


def positive_effect_per_lr(effect: np.ndarray, n_tokens: np.ndarray, zero_variance: np.ndarray, batch: int) -> float:
    """(1 - p_empty) * R: the expected first-order change of the target per unit lr of one GRPO step."""
    p_empty = empty_batch_probability(len(effect), int(zero_variance.sum()), batch)
    return (1.0 - p_empty) * step_effect(effect, n_tokens, zero_variance)


def bootstrap_positive_effect(
    effect: np.ndarray, n_tokens: np.ndarray, zero_variance: np.ndarray, batch: int, n_boot: int = 2000, seed: int = 0
) -> np.ndarray:
    """`n_boot` bootstrap replicates (prompts resampled with replacement) of `positive_effect_per_lr`."""
    n = len(effect)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    w = np.where(zero_variance, 0.0, n_tokens.astype(np.float64))
    num = (w * effect)[idx].sum(1)
    den = w[idx].sum(1)
    ratio = np.divide(num, den, out=np.zeros(n_boot), where=den > 0)
    n_zero = zero_variance[idx].sum(1)
    p_empty = np.array([empty_batch_probability(n, z, batch) for z in range(n + 1)])[n_zero]
    return (1.0 - p_empty) * ratio


def batch_draws(n_prompts: int, batch: int, draws: int, seed: int = 0) -> tuple[list[np.ndarray], bool]:
    """Batches of min(batch, n) prompt indices drawn without replacement, as the trainer draws a step's prompts.

    Every batch (exact expectation, returns True) when there are at most `draws` of them;
    otherwise `draws` seeded random ones (Monte Carlo, False).
    """
    b = min(batch, n_prompts)
    if math.comb(n_prompts, b) <= draws:
        import itertools

        return [np.array(c) for c in itertools.combinations(range(n_prompts), b)], True
    rng = np.random.default_rng(seed)
    return [np.sort(rng.choice(n_prompts, size=b, replace=False)) for _ in range(draws)], False


def batch_updates(
    effects: RLEffects,
    params: Mapping[str, torch.Tensor],
    update: UpdateConfig,
    state: OptimizerState | None,
    batches: Sequence[np.ndarray],
):  # type: ignore[no-untyped-def]
    """Per batch S of prompts, the simulated trainer step per unit lr U(clip(gbar_S)) (None: no informative group).

    gbar_S = sum n_x g_x / sum n_x over S's informative groups (the gradient of the trainer's
    token-mean loss), clipped by its own norm as `clip_grad_norm_` clips the batch, then one
    simulated optimiser step from `state`. A generator: one update is held at a time, and gbar_S
    is a running sum over the batch's gradients read one at a time from `effects.grads`.
    """
    slot = _gradient_slots(effects, "the batch terms")
    state = state or OptimizerState()
    names = list(params)
    hypers = {n: state.hyper(n, update) for n in names}
    for idx in batches:
        g = _batch_gradient(effects, slot, names, idx)
        yield None if g is None else simulated_step(g, params, update, hypers, state)[0]


def _gradient_slots(effects: RLEffects, what: str) -> dict[int, int]:
    """Prompt index -> row of `effects.grads` for every informative group (SampleEffectError if none were kept)."""
    if effects.grads is None:
        raise SampleEffectError(f"{what} need the per-prompt gradients (rl_prompt_effects(keep_grads=True))")
    informative = np.flatnonzero(~effects.zero_variance)
    if len(effects.grads) != len(informative):
        raise SampleEffectError("the kept gradients do not match the informative groups")
    return {int(x): j for j, x in enumerate(informative)}


def _batch_gradient(effects: RLEffects, slot: Mapping[int, int], names: Sequence[str], idx: Sequence[int]) -> dict | None:
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


def batch_step_effects(
    effects: RLEffects,
    params: Mapping[str, torch.Tensor],
    update: UpdateConfig,
    state: OptimizerState | None,
    batches: Sequence[np.ndarray],
) -> np.ndarray:
    """Per unit lr, the first-order effect <U(clip(gbar_S)), G> of the trainer's step on each batch S of prompts.

    A batch with no informative group takes no step (0). Averaged over batches this is the
    expected first-order growth of a real step; its gap to the positive effect is the noise
    effect of a non-linear update (Adam, clipping). See `batch_updates`.
    """
    out = np.zeros(len(batches))
    for b, d in enumerate(batch_updates(effects, params, update, state, batches)):
        if d is not None:
            out[b] = _dot(d, effects.target.vector)
    return out


def replay_path(
    effects: RLEffects,
    params: Mapping[str, torch.Tensor],
    update: UpdateConfig,
    state: OptimizerState | None,
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
    slot = _gradient_slots(effects, "the replay")
    state = state or OptimizerState()
    names = list(params)
    hypers = {n: state.hyper(n, update) for n in names}
    n, b = len(effects.effect), min(batch, len(effects.effect))
    out = np.zeros((runs, len(lrs)))
    for r in range(runs):
        rng = np.random.default_rng([seed, r])
        states = {nm: state.param_state(nm) for nm in names}
        order: list[int] = []
        for t, lr in enumerate(lrs):
            while len(order) < b:
                order += rng.permutation(n).tolist()
            g, order = _batch_gradient(effects, slot, names, order[:b]), order[b:]
            if g is None:  # no informative group: the trainer takes no step
                continue
            d, _, states = stepped_with_state(g, params, update, hypers, states)
            out[r, t] = lr * _dot(d, effects.target.vector)
    return out


def second_order_effects(
    model: torch.nn.Module,
    params: Mapping[str, torch.Tensor],
    effects: RLEffects,
    update: UpdateConfig,
    state: OptimizerState | None,
    batches: Sequence[np.ndarray],
    target_examples: Sequence[TokenizedExample],
) -> np.ndarray:
    """Per batch S, U_S^T H_T U_S / 2 (per unit lr^2) for T = -(mean target loss): the second-order change of T.

    One Hessian-vector product per batch (split over torchrun ranks). With Adam every coordinate
    moves by about lr, so this term grows with the number of parameters and can rival the
    first-order growth at learning rates that look small.
    """
    from sample_effect.runtime import distributed as dist

    hvp = target_loss_hvp(model, params, target_examples)
    n = len(batches)
    mine = set(dist.block(n)) if dist.active() else set(range(n))
    local: dict[int, float] = {}
    for b, d in enumerate(batch_updates(effects, params, update, state, batches)):
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


@dataclass
class RLPrediction:
    """One checkpoint's prediction: the JSON record, the per-prompt effects and the rollouts behind them."""

    record: dict[str, Any]
    effects: RLEffects
    groups: list[list[Rollout]]

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


# Dense vectors the noise terms hold at once, whatever the number of prompts: a batch's running
# sum and the row being added (or dbar_w and one update), the step or centred update, its H v.
RESIDENT_COPIES = 4


def _noise_memory_note(params: Mapping[str, torch.Tensor], n_prompts: int, compute: ComputeConfig,
                       spill_dir: str | os.PathLike | None) -> str | None:
    """Why the noise terms cannot run here (None when they can): their few resident vectors exceed the memory
    budget, or the spilled per-prompt gradients (one per prompt, on disk) exceed the free space."""
    acc = accumulation_dtype(next(iter(params.values())).dtype)
    row = sum(p.numel() for p in params.values()) * torch.empty((), dtype=acc).element_size()
    budget = compute.budget_bytes()
    if budget is not None and RESIDENT_COPIES * row > budget:
        return (f"skipped: the noise terms hold {RESIDENT_COPIES} dense vectors at a time (about "
                f"{RESIDENT_COPIES * row / 1e9:.3g} GB), more than the memory budget {budget / 1e9:.3g} GB; "
                "pass a parameter subset (params) or a larger memory_budget")
    return spill_space_note(n_prompts * row, spill_dir)


class RLPredictionWarning(UserWarning):
    """A predict-rl setting or sample that makes the prediction uninformative (all-zero-variance groups, ...)."""


def prompts_per_step_warning(requested: int, n_prompts: int) -> FieldText | None:
    """The message for a `prompts_per_step` larger than the prompts given (None when it fits).

    A `FieldText` naming `RLPredictConfig.prompts_per_step` (the CLI renders it with its flag)."""
    if requested <= n_prompts:
        return None
    return field_text("RLPredictConfig", (
        f"predict-rl: <prompts_per_step> {requested} exceeds the {n_prompts} prompts given, so every simulated "
        f"GRPO step uses all {n_prompts} (prompts_per_step clamped to {n_prompts}) and there is no batch noise "
        f"to sample; pass more prompts, or <prompts_per_step> at most {n_prompts} (train-grpo's default is 8)"))


def zero_variance_warning(n_zero: int, n_prompts: int, group_size: int, temperature: float | None) -> FieldText | None:
    """The message when every group (or more than half) has zero reward variance (None otherwise).

    A `FieldText` naming `RLPredictConfig` fields (the CLI renders it with its flags)."""
    if n_prompts == 0 or n_zero * 2 <= n_prompts:
        return None
    temp = f" (now {temperature:g})" if temperature is not None else ""
    fix = (f"more rollouts per prompt (<group_size>, now {group_size}), a shaped reward such as <predict_rl.reward> kk-partial "
           f"instead of an all-or-nothing one, a higher <temperature>{temp}, easier prompts, or a stronger start "
           "(an SFT checkpoint that already solves some prompts)")
    if n_zero == n_prompts:
        return field_text("RLPredictConfig", (
            f"predict-rl: ALL {n_prompts} prompt groups have zero reward variance (every rollout of a prompt got "
            "the same reward), so GRPO would take no step: every effect, the growth rate and its interval are 0, "
            f"which says nothing about this checkpoint. To get a signal, use {fix}"))
    return field_text("RLPredictConfig", (
        f"predict-rl: {n_zero} of {n_prompts} prompt groups ({100 * n_zero / n_prompts:.0f}%) have zero reward "
        f"variance and carry no signal; the prediction rests on the other {n_prompts - n_zero}. For more "
        f"informative groups, try {fix}"))


@dataclass
class RLPredictConfig:
    """How `predict_rl` samples and what it estimates (the CLI's predict-rl flags map onto these fields).

    group_size rollouts per prompt at `temperature`, up to `max_new_tokens`, seeded per prompt by
    `seed`; `prompts_per_step` prompts per simulated GRPO batch; `clip_eps` the PPO clip (inactive
    on the first on-policy step); `noise` turns the noise terms on; `n_boot` bootstrap draws of the
    positive effect; `noise_draws` batch draws of the first-order batch term; `curvature_draws`
    Hessian-vector products of the second-order term (0: off); `spill_dir` where the noise terms'
    per-prompt gradients go on disk (None: the system's temporary directory). `horizon_lrs`, the lr
    of every step of a planned run (empty: off), asks for `replay_runs` replays of that run on the
    frozen per-prompt gradients with the optimiser state carried (`replay_path`).
    """

    group_size: int = 8
    temperature: float = 1.0
    max_new_tokens: int = 256
    seed: int = 0
    prompts_per_step: int = 20
    clip_eps: float = 0.2
    noise: bool = True
    n_boot: int = 2000
    noise_draws: int = 256
    curvature_draws: int = 16
    spill_dir: str | None = None
    horizon_lrs: tuple[float, ...] = ()
    replay_runs: int = 16

    def validate(self, sampling: bool = True) -> RLPredictConfig:
        """Raise SampleEffectError on an out-of-range setting; return self."""
        if self.group_size < 2 and sampling:
            raise ConfigError("RLPredictConfig", f"<group_size> must be >= 2 (advantages need a group), got {self.group_size}")
        for name, low in (("prompts_per_step", 1), ("n_boot", 1), ("noise_draws", 1), ("curvature_draws", 0),
                          ("replay_runs", 1)):
            if getattr(self, name) < low:
                raise ConfigError("RLPredictConfig", f"<{name}> must be >= {low}, got {getattr(self, name)}")
        if any(not (math.isfinite(x) and x >= 0) for x in self.horizon_lrs):
            raise ConfigError("RLPredictConfig", f"<horizon_lrs> must be finite and >= 0, got {list(self.horizon_lrs)}")
        return self


@dataclass
class _NoisePlan:
    """Which noise terms `predict_rl` estimates, and why any are skipped."""

    noise: bool
    hessian: bool
    batch: bool
    second: bool
    nonlinear: bool
    memory_note: str | None

    replay: bool = False

    @property
    def keep_grads(self) -> bool:
        return self.batch or self.second or self.replay


def _noise_plan(target, update: UpdateConfig, cfg: RLPredictConfig, chosen, n_prompts: int,  # type: ignore[no-untyped-def]
                compute: ComputeConfig) -> _NoisePlan:
    """The noise terms this target and update call for, dropped (with the reason) when their tensors exceed the budget."""
    loss_target = isinstance(target, LossTarget)
    nonlinear = not update.rule.is_linear or update.clip is not None
    plan = _NoisePlan(cfg.noise, cfg.noise and loss_target and update.rule.is_linear, cfg.noise and nonlinear,
                      cfg.noise and loss_target and cfg.curvature_draws > 0, nonlinear, None, bool(cfg.horizon_lrs))
    if plan.hessian or plan.keep_grads:
        note = _noise_memory_note(chosen, n_prompts, compute, cfg.spill_dir)
        if note is not None:  # the positive effect needs none of it: report it, and say why the rest is missing
            log.warning("predict-rl: noise and second-order terms %s", note)
            plan = _NoisePlan(False, False, False, False, nonlinear, note, False)
    return plan


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
    compute: ComputeConfig | None = None,
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
    Keyword `settings` override fields of `config` (e.g. `group_size=4`). Memory does not grow with
    the number of prompts: the noise terms' per-prompt gradients are spilled to `spill_dir`.
    A `prompts_per_step` above the number of prompts is clamped to it, and a sample where more than
    half of the groups (or all) have zero reward variance is flagged; both with an
    `RLPredictionWarning` and in the record's `warnings`.
    """
    t0 = time.perf_counter()
    unknown = sorted(set(settings) - set(RLPredictConfig.__dataclass_fields__))
    if unknown:
        raise SampleEffectError(f"predict_rl got unknown settings {unknown}; RLPredictConfig has "
                                f"{', '.join(RLPredictConfig.__dataclass_fields__)}")
    cfg = replace(config or RLPredictConfig(), **settings).validate(sampling=groups is None)
    update = (update or UpdateConfig()).validate()
    compute = compute or ComputeConfig()
    if isinstance(target, SelfTarget):
        raise SampleEffectError("a 'self' target has no meaning for RL prompts; use a loss, direction or accuracy target")
    chosen = select_parameters(model, params) if params is None or isinstance(params, str) else dict(params)
    n_prompts = len(groups) if groups is not None else len(prompts)
    if n_prompts == 0:
        raise SampleEffectError("no RL prompts")
    notes = [m for m in [prompts_per_step_warning(cfg.prompts_per_step, n_prompts)] if m]
    for m in notes:  # before the sampling, which can take minutes
        warnings.warn(m, RLPredictionWarning, stacklevel=2)
    requested = cfg.prompts_per_step
    cfg = replace(cfg, prompts_per_step=min(cfg.prompts_per_step, n_prompts))  # the same numbers: batches clamp too
    plan = _noise_plan(target, update, cfg, chosen, n_prompts, compute)
    sampled = groups is None
    g, eff, groups = _score_prompts(model, tokenizer, prompts, reward, target, update, cfg, chosen, state, compute,
                                    groups, plan)
    zero_note = zero_variance_warning(int(eff.zero_variance.sum()), n_prompts, int(max(len(gr) for gr in groups)),
                                      cfg.temperature if sampled else None)
    if zero_note:
        warnings.warn(zero_note, RLPredictionWarning, stacklevel=2)
        notes.append(zero_note)
    try:
        record = _growth_record(model, chosen, eff, groups, target, g, update, state, cfg, plan)
    finally:
        eff.release()  # the spilled gradients are large; the record holds what they gave
    record["prompts_per_step_requested"] = requested
    record["warnings"] = notes
    record["temperature"] = cfg.temperature if sampled else None  # None: the rollouts were given, not sampled here
    record["max_new_tokens"] = cfg.max_new_tokens if sampled else None
    record["seconds"] = time.perf_counter() - t0
    return RLPrediction(record=record, effects=eff, groups=groups)


def _score_prompts(model, tokenizer, prompts, reward, target, update, cfg: RLPredictConfig, chosen, state,  # type: ignore[no-untyped-def]
                   compute: ComputeConfig, groups, plan: _NoisePlan):
    """Resolve G, sample the groups (this rank's block under torchrun) and compute every prompt's effect."""
    from sample_effect.runtime import distributed as dist

    if dist.is_distributed():
        dist.init(next(iter(chosen.values())).device)
    if isinstance(target, TargetVector):
        g = target
    elif dist.active():
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
    eff = rl_prompt_effects(model, chosen, local, g, update, state, cfg.clip_eps, keep_updates=plan.hessian,
                            progress=compute.progress, keep_grads=plan.keep_grads, compute=compute,
                            spill_dir=cfg.spill_dir) if local else None
    if dist.active():
        eff, local = _gather_effects(eff, local, mine, n_prompts, g, chosen, update, state, plan, cfg.spill_dir)
    assert eff is not None
    return g, eff, local


def _growth_record(model, chosen, eff: RLEffects, groups, target, g: TargetVector, update: UpdateConfig, state,  # type: ignore[no-untyped-def]
                   cfg: RLPredictConfig, plan: _NoisePlan) -> dict[str, Any]:
    """The prediction's JSON record: positive effect with its interval, the noise and second-order terms, the growth."""
    n = len(eff.effect)
    n_zero = int(eff.zero_variance.sum())
    batch = min(cfg.prompts_per_step, n)
    lr = update.lr
    per_lr = positive_effect_per_lr(eff.effect, eff.n_tokens, eff.zero_variance, cfg.prompts_per_step)
    boot = bootstrap_positive_effect(eff.effect, eff.n_tokens, eff.zero_variance, cfg.prompts_per_step, cfg.n_boot, cfg.seed)
    ci = (lr * float(np.percentile(boot, 2.5)), lr * float(np.percentile(boot, 97.5)))
    b_eff = batch * (n - n_zero) / n
    positive = lr * per_lr
    hess = _hessian_noise(model, chosen, eff, target, update, plan.noise, lr, b_eff, plan.memory_note)
    bat = _batch_noise(chosen, eff, update, state, plan.noise, plan.nonlinear, lr, positive, cfg.prompts_per_step,
                       cfg.noise_draws, cfg.seed, plan.memory_note)
    terms = [t for t in (hess, bat) if t["effect"] is not None]
    noise_effect = sum(t["effect"] for t in terms) if terms else None
    if hess["effect"] is None and not plan.nonlinear:  # the only term that could be non-zero was not estimated
        noise_effect = None
    ses = [t["stderr"] for t in terms if t["stderr"] is not None and math.isfinite(t["stderr"])]
    second = _second_order(model, chosen, eff, target, update, state, plan.second, lr, cfg.prompts_per_step,
                           cfg.curvature_draws, cfg.seed, plan.memory_note)
    replay = _replay(chosen, eff, update, state, plan, cfg)
    if second["effect"] is not None:  # first order (exact expectation over batches) + all of the second order
        second["growth"] = positive + (bat["effect"] or 0.0) + second["effect"]
    if bat.get("growth_stderr") is not None:  # non-linear update: the interval of the whole batch-step mean
        half = 1.96 * bat["growth_stderr"]
        growth_ci = [positive + (noise_effect or 0.0) - half, positive + (noise_effect or 0.0) + half]
        ci_method = "U-statistic standard error over prompts of the simulated batch step (normal, 95%)"
    else:
        growth_ci = [ci[0] + (noise_effect or 0.0), ci[1] + (noise_effect or 0.0)]
        ci_method = "bootstrap of the positive effect over prompts, shifted by the noise point estimate"
    return {
        "target": g.kind, "target_norm": g.norm(), "target_loss": g.target_loss, "target_stats": dict(g.stats),
        "n_prompts": n,
        "group_size": int(max(len(gr) for gr in groups)),
        "n_rollouts": int(sum(len(gr) for gr in groups)),
        "reward_mean": float(np.mean([r.reward for gr in groups for r in gr])),
        "mean_completion_tokens": float(eff.n_tokens.sum() / max(1, sum(len(gr) for gr in groups))),
        "zero_variance_groups": n_zero, "zero_variance_fraction": n_zero / n,
        "optimizer": update.optimizer, "lr": lr, "clip": update.clip,
        "prompts_per_step": cfg.prompts_per_step, "informative_per_step": b_eff,
        "empty_batch_probability": empty_batch_probability(n, n_zero, cfg.prompts_per_step),
        "effect_per_step": per_lr, "effect_token_weighted": eff.step_effect(),
        "effect_mean": float(eff.effect.mean()),
        "effect_mean_stderr": float(eff.effect.std(ddof=1) / math.sqrt(n)) if n > 1 else None,
        "positive_effect": positive, "positive_effect_ci95": list(ci),
        "noise_effect": noise_effect, "noise_effect_stderr": math.hypot(*ses) if ses else None,
        "noise_trace": hess["trace"], "noise_hessian_effect": hess["effect"],
        "noise_batch_effect": bat["effect"], "noise_batch_stderr": bat["stderr"],
        "noise_batch_exact": bat["exact"], "noise_batch_draws": bat["draws"],
        "noise_note": f"second-order (Hessian) term: {hess['note']}; first-order batch term: {bat['note']}",
        "second_order_effect": second["effect"], "second_order_stderr": second["stderr"],
        "second_order_draws": second["draws"], "growth_rate_second_order": second["growth"],
        "second_order_note": second["note"],
        "growth_rate": positive + (noise_effect or 0.0), "growth_rate_ci95": growth_ci,
        "growth_rate_ci_method": ci_method, "n_bootstrap": cfg.n_boot, "seed": cfg.seed,
        "replay": replay,
    }


def _replay(chosen, eff: RLEffects, update: UpdateConfig, state, plan: _NoisePlan, cfg: RLPredictConfig) -> dict | None:  # type: ignore[no-untyped-def]
    """`replay_path` summarised: mean per-step change, the total with its standard error, and the runs' spread."""
    if not cfg.horizon_lrs:
        return None
    if not plan.replay:
        return {"note": f"not computed: {plan.memory_note}", "per_step": None, "total": None}
    steps = len(cfg.horizon_lrs)
    if not (~eff.zero_variance).any():
        paths = np.zeros((cfg.replay_runs, steps))
    else:
        paths = replay_path(eff, chosen, update, state, cfg.horizon_lrs, cfg.prompts_per_step, cfg.replay_runs, cfg.seed)
    totals = paths.sum(1)
    return {
        "per_step": paths.mean(0).tolist(), "total": float(totals.mean()),
        "total_stderr": float(totals.std(ddof=1) / math.sqrt(len(totals))) if len(totals) > 1 else None,
        "total_runs_95": [float(x) for x in np.percentile(totals, [2.5, 97.5])], "runs": cfg.replay_runs,
        "note": "frozen start gradients and weights, optimiser state carried; the spread is over batch orders only",
    }


def _gather_effects(  # type: ignore[no-untyped-def]
    eff: RLEffects | None, local: list[list[Rollout]], mine: range, n: int, g: TargetVector, chosen,
    update: UpdateConfig, state, plan: _NoisePlan, spill_dir,
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
        store = _gather_rows(mine_rows, zero, n, chosen, spill_dir)
        if eff is not None:
            eff.release()
        state = state or OptimizerState()
        hypers = {k: state.hyper(k, update) for k in chosen}
        merged.grads = store if plan.keep_grads else None
        merged.updates = SimulatedSteps(store, chosen, update, hypers, state) if plan.hessian else None
    return merged, [r[6] for r in rows]


def _gather_rows(mine_rows, zero: np.ndarray, n: int, chosen, spill_dir) -> SpilledRows:  # type: ignore[no-untyped-def]
    """Every informative group's kept gradient, in prompt order, spilled on every rank: one all-reduce per row
    (the owner contributes the row, the others zeros), so a rank holds one row at a time."""
    from sample_effect.runtime import distributed as dist

    w, me = dist.world_size(), dist.rank()
    owner = np.zeros(n, dtype=np.int64)
    for r in range(w):
        owner[list(dist.block(n, r, w))] = r
    names = list(chosen)
    first = next(iter(chosen.values()))
    acc = accumulation_dtype(first.dtype)
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
            flat = torch.zeros(sum(sizes), dtype=acc, device=first.device)
        dist.all_reduce_sum_(flat)
        store.append({k: part.view(chosen[k].shape) for k, part in zip(names, flat.split(sizes))})
        del flat
    return store


def _second_order(  # type: ignore[no-untyped-def]
    model, params, eff: RLEffects, target, update: UpdateConfig, state, wanted: bool, lr: float, prompts_per_step: int,
    draws: int, seed: int, memory_note: str | None = None,
) -> dict:
    """(lr^2 / 2) E_S[U_S^T H_T U_S] over `draws` batches (every batch when there are fewer), for a loss target."""
    out: dict[str, Any] = {"effect": None, "stderr": None, "draws": 0, "growth": None}
    if not wanted:
        why = "off (--curvature-draws 0 or --no-noise)" if isinstance(target, LossTarget) else "needs a --target-data loss target"
        why = memory_note if memory_note and isinstance(target, LossTarget) else why
        return {**out, "note": why}
    if not (~eff.zero_variance).any():
        return {**out, "effect": 0.0, "stderr": 0.0, "note": "0, no prompt has reward variance"}
    batches, exact = batch_draws(len(eff.effect), prompts_per_step, draws, seed + 1)
    vals = lr * lr * second_order_effects(model, params, eff, update, state, batches, target.examples)
    se = 0.0 if exact else (float(vals.std(ddof=1) / math.sqrt(len(vals))) if len(vals) > 1 else float("nan"))
    how = f"every one of the {len(vals)} batches" if exact else f"{len(vals)} random batches"
    return {"effect": float(vals.mean()), "stderr": se, "draws": len(vals),
            "note": f"(lr^2 / 2) U_S^T H_T U_S averaged over {how}; growth_rate_second_order = positive + "
                    "first-order batch term + this (for SGD it contains the Hessian noise term)"}


def _hessian_noise(  # type: ignore[no-untyped-def]
    model, params, eff: RLEffects, target, update: UpdateConfig, noise: bool, lr: float, b_eff: float,
    memory_note: str | None = None,
) -> dict:
    """(lr^2 / 2b) tr(H_T Sigma_w) where it is defined and estimated; else None (or 0) with the reason."""
    m = int((~eff.zero_variance).sum())
    out: dict[str, Any] = {"effect": None, "stderr": None, "trace": None}
    if isinstance(target, DirectionTarget) or (isinstance(target, TargetVector) and target.kind == "direction"):
        return {**out, "effect": 0.0, "note": "0, a fixed direction is linear in theta"}
    if isinstance(target, AccuracyTarget):
        return {**out, "note": "not estimated for an accuracy target (its Hessian is not available)"}
    if not isinstance(target, LossTarget):
        return {**out, "note": "not estimated for a precomputed target vector"}
    if not noise:
        return {**out, "note": memory_note or "not requested (--no-noise)"}
    if not update.rule.is_linear:
        return {**out, "note": "not estimated for Adam (O(lr^2); the first-order batch term dominates at small lr)"}
    if m < 2:
        return {**out, "effect": 0.0 if m == 0 else None, "note": "fewer than 2 prompts with reward variance"}
    ne = rl_noise_effect(model, params, eff, target.examples)
    scale = lr * lr / (2 * b_eff) * finite_population(b_eff, m)
    return {"effect": scale * ne.trace, "stderr": scale * ne.stderr, "trace": ne.trace,
            "note": "(lr^2 / 2b) tr(H_T Sigma_w) (m - b) / m, b = prompts_per_step * (1 - zero_variance_fraction), "
                    "m = prompts with reward variance"}


def _batch_noise(  # type: ignore[no-untyped-def]
    params, eff: RLEffects, update: UpdateConfig, state, noise: bool, nonlinear: bool, lr: float, positive: float,
    prompts_per_step: int, draws: int, seed: int, memory_note: str | None = None,
) -> dict:
    """lr E_S <U(clip(gbar_S)), G> - positive effect, over batch draws; 0 for a linear update."""
    out: dict[str, Any] = {"effect": None, "stderr": None, "exact": None, "draws": 0}
    if not nonlinear:
        return {**out, "effect": 0.0, "note": "0, SGD without clipping is linear in the gradient"}
    if not noise:
        return {**out, "note": memory_note or "not requested (--no-noise)"}
    if not (~eff.zero_variance).any():
        return {**out, "effect": 0.0, "note": "0, no prompt has reward variance"}
    n = len(eff.effect)
    batches, exact = batch_draws(n, prompts_per_step, draws, seed)
    vals = lr * batch_step_effects(eff, params, update, state, batches)
    se = 0.0 if exact else (float(vals.std(ddof=1) / math.sqrt(len(vals))) if len(vals) > 1 else float("nan"))
    how = f"every one of the {len(vals)} batches" if exact else f"{len(vals)} random batches"
    return {"effect": float(vals.mean()) - positive, "stderr": se, "exact": exact, "draws": len(vals),
            "growth_stderr": batch_growth_stderr(vals, batches, n, min(prompts_per_step, n)),
            "note": f"E over {how} of the clipped, simulated batch step's effect, minus the positive effect"}


def batch_growth_stderr(values: np.ndarray, batches: Sequence[np.ndarray], n: int, b: int) -> float | None:
    """Standard error of the mean batch-step effect over fresh prompts and rollouts (None when b >= n).

    The mean over batches of b prompts is a U-statistic of the n sampled prompt groups; its
    variance is about (b^2 / n) Var(h(x)), h(x) the mean effect of the batches holding prompt x
    (Hoeffding's first-order term). Estimated from the same draws, so the Monte Carlo noise in
    h(x) makes it slightly conservative. This is the uncertainty a new sample of rollouts would
    show, which a bootstrap of the per-prompt effects alone misses for a non-linear update.
    """
    if b >= n or n < 3:
        return None
    contains = np.zeros((len(batches), n))
    for k, idx in enumerate(batches):
        contains[k, idx] = 1.0
    counts = contains.sum(0)
    seen = counts > 0
    if seen.sum() < 3:
        return None
    h = (contains.T @ values)[seen] / counts[seen]
    return float(b / math.sqrt(n) * h.std(ddof=1))
