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
from sample_effect.engine.backends import EffectSettings, make_backend
from sample_effect.engine.core import ComputeConfig, PlanCache
from sample_effect.engine.vectors import TargetVector
from sample_effect.errors import ConfigError, SampleEffectError
from sample_effect.models.loading import accumulation_dtype, select_parameters
from sample_effect.objectives.base import SFT, Objective
from sample_effect.targets.core import Target, resolve_target
from sample_effect.update.optim import OptimizerState, UpdateConfig, load_optimizer_state

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
    plans: PlanCache | None = None,
) -> EffectResult:
    """e(s) for every example: clip g(s), take the simulated optimiser step, dot with G.

    Effects are per unit learning rate, so the same for any lr with SGD/Adam/AdamW: the
    first-order change of the target after one step at lr is lr * e(s). `objective` says what an
    example's loss is: SFT cross-entropy (default), or a GRPO / REINFORCE group built by
    `sample_effect.objectives.grpo_example`, which then goes through the same fast paths. The
    path is the backend `compute.method` names (`sample_effect.engine.backends`); `plans` keeps
    the ghost self-check results (default: the cache the model carries).
    """
    update.validate()
    compute = compute or ComputeConfig()
    state = state or OptimizerState()
    n = len(examples)
    if not target.all_finite():
        raise SampleEffectError(f"the target direction '{target.kind}' contains NaN or Inf; nothing can be ranked against it")
    effect = np.full(n, np.nan)
    loss = np.full(n, np.nan)
    gnorm = np.full(n, np.nan)
    settings = EffectSettings.build(params, target, update, state, compute, objective, plans)
    backend = make_backend(model, params, settings)
    for out in backend.effects(examples):
        effect[out.indices] = out.effect
        loss[out.indices] = out.loss
        if out.grad_norm is not None:
            gnorm[out.indices] = out.grad_norm
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
        raise ConfigError("resolve_state", "<optimizer_state> holds Adam moments; use <UpdateConfig.optimizer> adam or adamw with it")
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
            log.warning("%d sequence(s) truncated to the maximum length, %s tokens", report.n_truncated, max_length)
    else:
        tokenized = list(examples)  # type: ignore[arg-type]
    chosen = select_parameters(model, params)
    state = resolve_state(model, chosen, update, optimizer_state)
    g = resolve_target(target, model, chosen, tokenized, compute)
    return compute_effects(model, chosen, tokenized, g, update, state, compute)
