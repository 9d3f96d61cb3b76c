"""Sample effects: e(s) = <delta_theta(s), G> / lr for every example, and the ranked table.

This is the stage that joins the others: per-example gradients (engine) -> clipping and the
simulated optimiser step (optim) -> dot product with the target direction (targets).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from sample_effect.data.examples import Example, TokenizedExample, tokenize_examples
from sample_effect.engine.core import (
    ComputeConfig,
    iter_example_directional,
    iter_example_factors,
    iter_example_gradients,
)
from sample_effect.errors import SampleEffectError
from sample_effect.kernels.ghost import (
    Factor,
    factor_dot,
    materialise_sum,
    norm_method,
    sq_norms_gram,
)
from sample_effect.models.loading import accumulation_dtype, select_parameters
from sample_effect.objectives.base import SFT, Objective
from sample_effect.targets.core import Target, TargetVector, resolve_target
from sample_effect.update.optim import (
    OptimizerState,
    UpdateConfig,
    clip_coefficients,
    load_optimizer_state,
)

log = logging.getLogger("sample_effect")

COLUMNS = ["id", "rank", "effect", "loss", "n_tokens", "n_responses", "grad_norm", "flag"]


@dataclass
class EffectResult:
    """Effects in input order plus what produced them."""

    ids: list[str]
    effect: np.ndarray
    loss: np.ndarray
    grad_norm: np.ndarray
    n_tokens: np.ndarray
    n_responses: np.ndarray
    target: TargetVector

    def table(self) -> pd.DataFrame:
        """One row per example, ranked (rank 1 = largest effect; ties keep input order)."""
        df = pd.DataFrame(
            {
                "id": self.ids,
                "effect": self.effect,
                "loss": self.loss,
                "n_tokens": self.n_tokens,
                "n_responses": self.n_responses,
                "grad_norm": self.grad_norm,
                "flag": np.where(np.isfinite(self.effect) & np.isfinite(self.loss), "", "nonfinite"),
            }
        )
        return rank_table(df)


def rank_table(df: pd.DataFrame) -> pd.DataFrame:
    """Add `rank` (1 = largest effect, ties by input order, non-finite last) and sort by it."""
    eff = df["effect"].where(np.isfinite(df["effect"]))
    df = df.assign(rank=eff.rank(ascending=False, method="first", na_option="bottom").astype(int))
    df = df.sort_values("rank", kind="stable").reset_index(drop=True)
    return df[[c for c in COLUMNS if c in df.columns] + [c for c in df.columns if c not in COLUMNS]]


def compute_effects(
    model: torch.nn.Module,
    params: Mapping[str, torch.Tensor],
    examples: Sequence[TokenizedExample],
    target: TargetVector,
    update: UpdateConfig,
    state: OptimizerState | None = None,
    compute: ComputeConfig | None = None,
    objective: Objective = SFT,
) -> EffectResult:
    """e(s) for every example: clip g(s), take the simulated optimiser step, dot with G.

    Effects are per unit learning rate, so the same for any lr with SGD/Adam/AdamW: the
    first-order change of the target after one step at lr is lr * e(s). `objective` says what an
    example's loss is: SFT cross-entropy (default), or a GRPO / REINFORCE group built by
    `sample_effect.objectives.grpo_example`, which then goes through the same fast paths.
    """
    update.validate()
    compute = compute or ComputeConfig()
    state = state or OptimizerState()
    n = len(examples)
    if not all(bool(torch.isfinite(v).all()) for v in target.vector.values()):
        raise SampleEffectError(f"the target direction '{target.kind}' contains NaN or Inf; nothing can be ranked against it")
    effect = np.full(n, np.nan)
    loss = np.full(n, np.nan)
    gnorm = np.full(n, np.nan)
    hypers = {name: state.hyper(name, update) for name in params}
    if compute.method == "jvp":
        _jvp_effects(model, params, examples, target, update, hypers, compute, effect, loss, objective)
    elif compute.method == "vmap":
        _vmap_effects(model, params, examples, target, update, hypers, state, compute, effect, loss, gnorm, objective)
    elif compute.method in ("auto", "ghost"):
        _ghost_effects(model, params, examples, target, update, hypers, state, compute, effect, loss, gnorm, objective)
    else:
        raise SampleEffectError(f"unknown engine method '{compute.method}'; choose auto, ghost, vmap or jvp")
    bad = [examples[i].id for i in np.flatnonzero(~np.isfinite(effect))]
    if bad and len(bad) == n:
        raise SampleEffectError("every effect is NaN or Inf; check the model weights and the data")
    if bad:
        log.warning("%d example(s) have a non-finite effect (flagged, ranked last), e.g. id '%s'", len(bad), bad[0])
    return EffectResult(
        ids=[ex.id for ex in examples],
        effect=effect,
        loss=loss,
        grad_norm=gnorm,
        n_tokens=np.array([ex.n_tokens for ex in examples]),
        n_responses=np.array([ex.n_responses for ex in examples]),
        target=target,
    )


def _vmap_effects(model, params, examples, target, update, hypers, state, compute, effect, loss, gnorm, objective=SFT) -> None:  # type: ignore[no-untyped-def]
    """Reference path: per-example gradients, clipping, the simulated step, then <d(s), G> layer by layer."""
    for batch in iter_example_gradients(model, params, examples, compute, objective=objective):
        sq = sum((g.flatten(1) ** 2).sum(1) for g in batch.grads.values())
        coef = clip_coefficients(sq, update.clip)
        total = torch.zeros_like(sq)
        for name, g in batch.grads.items():
            p = params[name].detach().to(g.dtype)
            g = g * coef.view(-1, *([1] * (g.dim() - 1))) if update.clip is not None else g
            d = update.rule.step(g, p, hypers[name], state.param_state(name))
            total += d.flatten(1) @ target.vector[name].flatten()
        effect[batch.indices] = total.double().cpu().numpy()
        loss[batch.indices] = batch.losses.double().cpu().numpy()
        gnorm[batch.indices] = sq.sqrt().double().cpu().numpy()


def _weight_decay_dot(params, target, hypers) -> float:  # type: ignore[no-untyped-def]
    """sum over parameters of wd * <theta, G>: the part of an SGD effect that is the same for every example."""
    return sum(
        hypers[n].weight_decay * float((params[n].detach().to(target.vector[n].dtype) * target.vector[n]).sum())
        for n in params
        if hypers[n].weight_decay
    )


def _ghost_effects(model, params, examples, target, update, hypers, state, compute, effect, loss, gnorm, objective=SFT) -> None:  # type: ignore[no-untyped-def]
    """Fast path: per-example gradients kept as factors, contracted with G layer by layer.

    SGD: e = -coef * sum_l <g_l, G_l> - wd <theta, G> with no per-example gradient formed; the
    clipping coefficient needs ||g||, from Gram forms or one layer's gradients at a time. Adam:
    each layer's per-example gradients are formed (in row chunks under the budget), clipped,
    stepped and dotted with G, then dropped.
    """
    need_norm = update.clip is not None or compute.grad_norms
    decay = _weight_decay_dot(params, target, hypers) if update.rule.is_linear else 0.0
    budget = compute.budget_bytes()
    for batch in iter_example_factors(model, params, examples, compute, objective=objective):
        idx = batch.indices
        n_ex = len(idx)
        sq = None
        if need_norm:
            sq = sum(_sq_norms(fs, compute.norm_method, block_rows(fs[0], 1, budget)) for fs in batch.factors.values())
        if update.rule.is_linear:
            dots = sum(factor_dot(f, target.vector[name]) for name, fs in batch.factors.items() for f in fs)
            coef = clip_coefficients(sq, update.clip) if update.clip is not None else None  # type: ignore[arg-type]
            eff = -(coef * dots if coef is not None else dots) - decay  # type: ignore[operator]
        else:
            coef = clip_coefficients(sq, update.clip) if update.clip is not None else None  # type: ignore[arg-type]
            eff = torch.zeros(n_ex, dtype=batch.losses.dtype, device=batch.losses.device)
            sq_mat = torch.zeros_like(eff)
            for name, fs in batch.factors.items():
                p = params[name].detach().to(eff.dtype)
                h = hypers[name]
                eff += update.rule.shared_dot(p, target.vector[name], h)
                step = block_rows(fs[0], 2, budget)
                for r0 in range(0, n_ex, step):
                    rows = slice(r0, min(n_ex, r0 + step))
                    g = materialise_sum(fs, rows, writable=True)  # effect_rows may overwrite it
                    if coef is not None:
                        g.mul_(coef[rows].view(-1, *([1] * (g.dim() - 1))))
                    dots, sq_rows = update.rule.effect_rows(
                        g, p, target.vector[name], h, state.param_state(name), want_sq_norms=not need_norm,
                    )
                    eff[rows] += dots
                    if sq_rows is not None:
                        sq_mat[rows] += sq_rows
            if not need_norm:
                sq = sq_mat
        effect[idx] = eff.double().cpu().numpy()
        loss[idx] = batch.losses.double().cpu().numpy()
        if sq is not None:
            gnorm[idx] = sq.sqrt().double().cpu().numpy()


BLOCK_BYTES = 64 * 2**20  # per-layer gradient blocks: large enough for fast kernels, small enough to reuse memory


def block_rows(f: Factor, copies: int, budget: int | None) -> int:
    """How many examples' gradients of one layer to form at once: `copies` buffers within min(64 MiB, budget / 4)."""
    n = int(f.b.shape[0])
    cap = BLOCK_BYTES if budget is None else min(BLOCK_BYTES, budget // 4)
    per = copies * f.numel() * f.b.element_size()
    return max(1, min(n, cap // max(per, 1)))


def _sq_norms(fs: list[Factor], method: str, rows: int) -> torch.Tensor:
    """||g_e||^2 of one parameter for every example, by Gram forms or by forming `rows` gradients at a time."""
    if method not in ("auto", "gram", "materialise"):
        raise SampleEffectError(f"unknown norm method '{method}'; choose auto, gram or materialise")
    chosen = norm_method(fs) if method == "auto" else method
    if chosen == "gram" and norm_method(fs, force_gram=True) == "gram":
        return sq_norms_gram(fs)
    n = int(fs[0].b.shape[0])
    parts = [materialise_sum(fs, slice(r, min(n, r + rows))).flatten(1).pow(2).sum(1) for r in range(0, n, rows)]
    return torch.cat(parts)


def _jvp_effects(model, params, examples, target, update, hypers, compute, effect, loss, objective=SFT) -> None:  # type: ignore[no-untyped-def]
    """SGD without clipping: e(s) = -<g(s), G> - wd <theta, G>, by forward-mode AD (no grad norms)."""
    if not update.rule.is_linear or update.clip is not None:
        raise SampleEffectError("the jvp method computes SGD effects without clipping only; use --method vmap")
    decay = _weight_decay_dot(params, target, hypers)
    for idx, dots, losses in iter_example_directional(model, params, examples, target.vector, compute, objective=objective):
        effect[idx] = (-dots.double() - decay).cpu().numpy()
        loss[idx] = losses.double().cpu().numpy()


def score_examples(
    model: torch.nn.Module,
    tokenizer: Any,
    examples: Sequence[Example] | Sequence[TokenizedExample],
    target: Target,
    update: UpdateConfig | None = None,
    params: str | None = None,
    optimizer_state: str | os.PathLike | OptimizerState | None = None,
    compute: ComputeConfig | None = None,
    max_length: int | None = None,
) -> pd.DataFrame:
    """Score and rank every example by its sample effect toward `target`; the Python face of `rank`.

    Returns one row per example id, sorted by rank, with columns id, rank, effect, loss,
    n_tokens, n_responses, grad_norm. `params` is a regex over parameter names (default: all
    trainable); `optimizer_state` is a file in the `--optimizer-state` format or a loaded state.
    """
    return score_examples_result(
        model, tokenizer, examples, target, update, params, optimizer_state, compute, max_length
    ).table()


def resolve_state(
    model: torch.nn.Module,
    chosen: Mapping[str, torch.Tensor],
    update: UpdateConfig,
    optimizer_state: str | os.PathLike | OptimizerState | None,
) -> OptimizerState | None:
    """An optimiser state for the chosen parameters: as given, loaded from a file by name, or None (fresh)."""
    if optimizer_state is None or isinstance(optimizer_state, OptimizerState):
        return optimizer_state
    if not update.rule.needs_state:
        raise SampleEffectError("--optimizer-state holds Adam moments; use --optimizer adam or adamw with it")
    dtype = next(iter(chosen.values())).dtype
    if os.path.isdir(optimizer_state):  # a transformers Trainer checkpoint: optimizer.pt without names
        from sample_effect.update.hf_checkpoint import load_trainer_optimizer_state

        return load_trainer_optimizer_state(optimizer_state, model, chosen, accumulation_dtype(dtype))
    return load_optimizer_state(
        optimizer_state, chosen, accumulation_dtype(dtype), model_names={n for n, _ in model.named_parameters()}
    )


def score_examples_result(
    model: torch.nn.Module,
    tokenizer: Any,
    examples: Sequence[Example] | Sequence[TokenizedExample],
    target: Target,
    update: UpdateConfig | None = None,
    params: str | None = None,
    optimizer_state: str | os.PathLike | OptimizerState | None = None,
    compute: ComputeConfig | None = None,
    max_length: int | None = None,
) -> EffectResult:
    """Like `score_examples` but returns the unranked `EffectResult` (effects in input order)."""
    update = (update or UpdateConfig()).validate()
    compute = compute or ComputeConfig()
    if not examples:
        raise SampleEffectError("the dataset is empty")
    if isinstance(examples[0], Example):
        tokenized, report = tokenize_examples(examples, tokenizer, max_length)  # type: ignore[arg-type]
        if report.n_truncated:
            log.warning("%d sequence(s) truncated to --max-length %s", report.n_truncated, max_length)
    else:
        tokenized = list(examples)  # type: ignore[arg-type]
    chosen = select_parameters(model, params)
    state = resolve_state(model, chosen, update, optimizer_state)
    g = resolve_target(target, model, chosen, tokenized, compute)
    return compute_effects(model, chosen, tokenized, g, update, state, compute)
