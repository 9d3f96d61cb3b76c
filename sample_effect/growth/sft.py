"""Predicted SFT curves: how a target moves, step by step, over a real training schedule.

The prediction linearises the target around the starting weights theta_0 (docs/theory.md, "Growth prediction"):
per-example gradients g_i and the target direction G are taken at theta_0, and the trainer's
schedule is replayed on them exactly as `train_sft` runs it: the same batch order (seeded
permutations), gradient accumulation, batch-level clip_grad_norm_, the lr schedule with warmup,
and AdamW's moments carried from step to step. Step t then changes the target by lr_t <d_t, G>.

Two parts per step (SDE view, arXiv 2505.17988):
- positive effect: the step the optimiser would take on the full-data mean gradient (the
  dataset effect pushed through the schedule);
- noise effect: what drawing small batches adds on average. For AdamW it is the Monte Carlo
  mean over R independent batch orders of lr_t <d_t, G> minus the positive effect (Adam is not
  linear in the gradient, so batch noise changes the expected step); for SGD it is the
  second-order term (lr_t^2 / 2b) tr(H_T Sigma) (n - b) / n, by Hessian-vector products
  (`growth.py`; (n - b) / n because a batch is drawn without replacement from the n examples).
The curve for the trainer's own seed is reported too: it is what one real run should follow
while the first-order picture holds.
"""

from __future__ import annotations

import functools
import math
import operator
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from sample_effect.data.examples import TokenizedExample
from sample_effect.engine.core import ComputeConfig, iter_example_factors
from sample_effect.engine.vectors import TargetVector
from sample_effect.errors import ConfigError, SampleEffectError
from sample_effect.growth.trajectory import StepContext, draw_batches, simulate
from sample_effect.kernels.ghost import materialise_sum
from sample_effect.training.sft import SFTConfig
from sample_effect.update.optim import UpdateConfig
from sample_effect.update.rules import clip_coefficients


@dataclass
class SFTCurve:
    """One dataset's predicted curve: a row per step and a few scalars."""

    name: str
    steps: pd.DataFrame  # step, lr, positive, noise, noise_se, seed_path, predicted, cumulative, target
    dataset_effect: float  # mean over examples of e(s) for one fresh AdamW step (per unit lr)
    n_examples: int
    start_value: float | None  # target value at theta_0 (the target loss, for a loss target)
    sign: float  # +1: the target value rises with the target (direction); -1: a loss falls

    def summary(self) -> dict:
        """The curve's scalars as a JSON-ready dict: totals of each term and the predicted final value."""
        last = self.steps.iloc[-1]
        return {
            "name": self.name, "n_examples": self.n_examples, "dataset_effect": self.dataset_effect,
            "steps": int(last["step"]), "predicted_total_change": float(last["cumulative"]),
            "positive_total": float(self.steps["positive"].sum()), "noise_total": float(self.steps["noise"].sum()),
            "seed_path_total": float(self.steps["seed_path"].sum()),
            "start_value": self.start_value, "predicted_final_value": None if self.start_value is None else float(last["target"]),
        }


def schedule_lrs(cfg: SFTConfig, total: int) -> list[float]:
    """The lr of every step, read off the trainer's own scheduler."""
    from sample_effect.training.common import make_schedule

    dummy = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=cfg.update.lr)
    sched = make_schedule(dummy, cfg.schedule, cfg.warmup_steps, total)
    lrs = []
    for _ in range(total):
        lrs.append(float(sched.get_last_lr()[0]))
        dummy.step()
        sched.step()
    return lrs


def total_steps(cfg: SFTConfig, n: int) -> int:
    """Optimiser steps `train_sft` takes for n examples."""
    per_step = cfg.batch_size * cfg.grad_accum
    return cfg.max_steps if cfg.max_steps is not None else max(1, math.ceil(cfg.epochs * math.ceil(n / per_step)))


def batch_schedule(cfg: SFTConfig, n: int, total: int, seed: int) -> list[list[list[int]]]:
    """Per step, the micro-batches of example indices, drawn exactly as `train_sft` draws them."""
    gen = torch.Generator().manual_seed(seed)
    micro = draw_batches(n, cfg.batch_size, total * cfg.grad_accum, lambda k: torch.randperm(k, generator=gen).tolist())
    return [micro[t * cfg.grad_accum : (t + 1) * cfg.grad_accum] for t in range(total)]


def example_gradient_matrix(
    model: torch.nn.Module,
    params: Mapping[str, torch.Tensor],
    examples: Sequence[TokenizedExample],
    compute: ComputeConfig | None = None,
) -> torch.Tensor:
    """All per-example gradients at the current weights as one [n, n_params] matrix (parameter order)."""
    compute = compute or ComputeConfig()
    n_params = sum(p.numel() for p in params.values())
    first = next(iter(params.values()))
    from sample_effect.models.loading import accumulation_dtype

    acc = accumulation_dtype(first.dtype)
    need = len(examples) * n_params * torch.empty((), dtype=acc).element_size()
    budget = compute.budget_bytes()
    if budget is not None and need > 4 * budget:
        raise ConfigError(
            "ComputeConfig",
            f"predict-sft keeps every example's gradient: {len(examples)} x {n_params} parameters needs "
            f"{need / 1e9:.3g} GB; pass fewer examples, <select_parameters.pattern>, or a larger <memory_budget>",
        )
    from sample_effect.runtime import distributed as dist

    if dist.active():  # torchrun: each rank its block of rows, summed into the full matrix on every rank
        mine = dist.block(len(examples))
        out = torch.zeros(len(examples), n_params, dtype=acc, device=first.device)
        part = [examples[i] for i in mine]
        offset = mine.start
    else:
        out = torch.empty(len(examples), n_params, dtype=acc, device=first.device)
        part, offset = list(examples), 0
    if part:
        for batch in iter_example_factors(model, params, part, compute, desc="per-example gradients"):
            cols = [materialise_sum(fs).flatten(1) for fs in batch.factors.values()]
            out[[offset + i for i in batch.indices]] = torch.cat(cols, dim=1)
    if dist.active():
        dist.all_reduce_sum_(out)
    return out


def sft_update(cfg: SFTConfig, optimizer: str = "adamw") -> UpdateConfig:
    """The update `train_sft` takes with `cfg`: the named rule with the trainer's lr, betas, eps, weight decay and clipping.

    `optimizer` 'adamw' is the trainer's own; another registered rule is simulated with the same settings.
    """
    return UpdateConfig(**{**asdict(cfg.update), "optimizer": optimizer})


FLAT = "theta"  # the one "parameter" of the flat vectors an SFT curve steps on


def _path(
    grads: torch.Tensor, gvec: torch.Tensor, ctx: StepContext, lrs: Sequence[float],
    batches: Sequence[Sequence[Sequence[int]]] | None, bar: Any = None,
) -> np.ndarray:
    """Per-step first-order target change lr_t <d_t, G> along one batch path (None: the full-data mean each step).

    The steps go through the trajectory simulator (`trajectory.simulate`) on the flat vectors, the
    optimiser state (e.g. AdamW's moments) carried from step to step; `bar` (a tqdm), if given,
    advances by one per step.
    """
    mean = grads.mean(0)

    def gradient(t: int) -> dict[str, torch.Tensor]:
        if bar is not None:
            bar.update(1)
        if batches is None:
            return {FLAT: mean}
        return {FLAT: functools.reduce(operator.add, (grads[idx].mean(0) for idx in batches[t])) / len(batches[t])}

    return simulate(ctx, lrs, gradient, {FLAT: gvec})


def predict_sft_curve(
    model: torch.nn.Module,
    params: Mapping[str, torch.Tensor],
    examples: Sequence[TokenizedExample],
    target: TargetVector,
    cfg: SFTConfig,
    name: str = "data",
    replicates: int = 8,
    update: UpdateConfig | None = None,
    target_examples: Sequence[TokenizedExample] | None = None,
    compute: ComputeConfig | None = None,
) -> SFTCurve:
    """The predicted per-step and cumulative change of the target over `cfg`'s schedule on `examples`.

    `target` is G over `params` (for a loss target, minus the loss gradient, so a positive change
    is a falling loss). `update` is the simulated step (its rule, hyper-parameters and clipping;
    the lrs come from `cfg`'s schedule); None replays the trainer, `sft_update(cfg)` (AdamW), and
    `sft_update(cfg, name)` simulates another registered rule with the trainer's settings. A
    linear rule ('sgd': plain SGD steps) gets the Hessian noise term (a loss target needs
    `target_examples` for the Hessian), the others the Monte Carlo one over `replicates` batch
    orders. `compute.progress` shows tqdm bars on stderr: the per-example gradients, then the
    replayed steps of every batch path (positive, the trainer's seed, each replicate).
    """
    cfg.validate()
    update = (update or sft_update(cfg)).validate()
    rule = update.rule
    compute = compute or ComputeConfig()
    progress = compute.progress
    if replicates < 1:
        raise ConfigError("predict_sft_curve", f"<replicates> must be >= 1, got {replicates}")
    if not examples:
        raise SampleEffectError(f"dataset '{name}' is empty")
    grads = example_gradient_matrix(model, params, examples, compute)
    acc = grads.dtype
    gvec = torch.cat([target.vector[n].flatten().to(acc) for n in params])
    theta0 = torch.cat([p.detach().flatten().to(acc) for p in params.values()])
    ctx = StepContext.build({FLAT: theta0}, update)
    total = total_steps(cfg, len(examples))
    lrs = schedule_lrs(cfg, total)
    n_paths = 2 + (0 if rule.is_linear else replicates)
    with tqdm(total=n_paths * total, desc=f"predict-sft {name}", unit="step", disable=not progress) as bar:
        bar.set_postfix_str("positive effect")
        positive = _path(grads, gvec, ctx, lrs, None, bar)
        bar.set_postfix_str("trainer's seed")
        seed_path = _path(grads, gvec, ctx, lrs, batch_schedule(cfg, len(examples), total, cfg.seed), bar)
        if not rule.is_linear:
            reps = []
            for r in range(replicates):
                bar.set_postfix_str(f"noise: batch order {r + 1}/{replicates}")
                reps.append(_path(grads, gvec, ctx, lrs, batch_schedule(cfg, len(examples), total, cfg.seed + 1 + r), bar))
            noise = np.stack(reps).mean(0) - positive
            noise_se = np.stack(reps).std(0, ddof=1) / math.sqrt(replicates) if replicates > 1 else np.full(total, np.nan)
        else:
            bar.set_postfix_str("noise: Hessian trace")
            noise, noise_se = _sgd_noise(model, params, grads, update, cfg.batch_size * cfg.grad_accum, lrs,
                                         target_examples)
    predicted = positive + noise
    dataset_effect = _fresh_dataset_effect(grads, gvec, ctx)
    start = target.target_loss
    sign = -1.0 if start is not None else 1.0
    cum = np.cumsum(predicted)
    steps = pd.DataFrame({
        "step": np.arange(1, total + 1), "lr": lrs, "positive": positive, "noise": noise, "noise_se": noise_se,
        "seed_path": seed_path, "predicted": predicted, "cumulative": cum,
        "target": (start + sign * cum) if start is not None else cum,
    })
    return SFTCurve(name, steps, dataset_effect, len(examples), start, sign)


def _fresh_dataset_effect(grads: torch.Tensor, gvec: torch.Tensor, ctx: StepContext) -> float:
    """Mean over examples of one fresh step's effect (a batch of one, clipped as the trainer clips a batch).

    The per-example step is the engine's own (the rule's fused `effect_rows`), in blocks of rows.
    A linear rule (SGD) leaves out its weight-decay term -wd <theta, G>, as this always has.
    """
    rule, theta0, hyper, clip = ctx.update.rule, ctx.params[FLAT], ctx.hypers[FLAT], ctx.update.clip
    total = 0.0
    for r0 in range(0, grads.shape[0], 64):
        g = grads[r0 : r0 + 64].clone()
        if clip is not None:
            g.mul_(clip_coefficients(g.pow(2).sum(1), clip).unsqueeze(1))
        dots, _ = rule.effect_rows(g, theta0, gvec, hyper)
        total += float(dots.sum())
    decay = 0.0 if rule.is_linear else rule.shared_dot(theta0, gvec, hyper)
    return total / grads.shape[0] + decay


def _sgd_noise(
    model: torch.nn.Module, params: Mapping[str, torch.Tensor], grads: torch.Tensor, update: UpdateConfig, b: int,
    lrs: Sequence[float], target_examples: Sequence[TokenizedExample] | None,
) -> tuple[np.ndarray, np.ndarray]:
    """(lr_t^2 / 2b) tr(H_T Sigma) (n - b) / n per step for a loss target; zero for a fixed direction.

    The per-example SGD updates -clip(g_i) come from the gradient matrix already held, so the
    only new work is one Hessian-vector product per example (split across torchrun ranks).
    """
    if target_examples is None:
        return np.zeros(len(lrs)), np.zeros(len(lrs))
    from sample_effect.growth.noise import finite_population, target_loss_hvp, trace_from_centred

    if grads.shape[0] < 2:
        raise SampleEffectError("the noise effect needs at least 2 examples")
    d = -grads * clip_coefficients(grads.pow(2).sum(1), update.clip).unsqueeze(1)
    centred_flat = d - d.mean(0)
    shapes = [(name, p.shape, p.numel()) for name, p in params.items()]

    def unflatten(row: torch.Tensor) -> dict[str, torch.Tensor]:
        out, o = {}, 0
        for name, shape, k in shapes:
            out[name] = row[o : o + k].view(shape)
            o += k
        return out

    centred = [unflatten(row) for row in centred_flat]
    ne = trace_from_centred(centred, target_loss_hvp(model, params, target_examples), sign=-1.0)  # H_T = -H_L
    lr = np.asarray(lrs)
    scale = lr * lr / (2 * b) * finite_population(b, grads.shape[0])  # batches drawn without replacement
    return scale * ne.trace, scale * ne.stderr


def curves_table(curves: Sequence[SFTCurve]) -> pd.DataFrame:
    """All datasets' step rows in one long table (a `dataset` column first)."""
    return pd.concat([c.steps.assign(dataset=c.name) for c in curves], ignore_index=True)[
        ["dataset", *curves[0].steps.columns]
    ]


def predict_sft_report(curves: Sequence[SFTCurve], cfg: SFTConfig, target_kind: str, optimizer: str, replicates: int) -> dict:
    """The JSON document `predict-sft` writes."""
    return {
        "target": target_kind, "optimizer": optimizer, "replicates": replicates, "config": asdict(cfg),
        "datasets": [c.summary() for c in curves],
    }
