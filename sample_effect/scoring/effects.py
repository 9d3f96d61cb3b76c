"""Sample effects: e(s) = <delta_theta(s), G> / lr for every example, in memory.

The public faces of the one scoring path (`sample_effect.scoring.run.score`): `score_examples`
(the ranked table), `score_examples_result` (the `Effects`) and `compute_effects` (for callers
that hold the chosen parameters, tokenized examples and a resolved `TargetVector`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch

from sample_effect.data.examples import Example, TokenizedExample, tokenize_examples
from sample_effect.engine.core import ComputeConfig, PlanCache
from sample_effect.engine.vectors import TargetVector
from sample_effect.errors import ConfigError, SampleEffectError
from sample_effect.models.loading import accumulation_dtype, select_parameters
from sample_effect.objectives.base import SFT, Objective
from sample_effect.scoring.result import Effects
from sample_effect.scoring.run import InMemoryOutput, ScoringRun, score
from sample_effect.targets.core import Target
from sample_effect.update.optim import OptimizerState, UpdateConfig, load_optimizer_state

log = logging.getLogger("sample_effect")


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
) -> Effects:
    """e(s) for every example toward a resolved G: clip g(s), take the simulated optimiser step, dot with G.

    Effects are per unit learning rate, so the same for any lr with SGD/Adam/AdamW: the
    first-order change of the target after one step at lr is lr * e(s). `objective` says what an
    example's loss is: SFT cross-entropy (default), or a GRPO / REINFORCE group built by
    `sample_effect.objectives.grpo_example`, which then goes through the same fast paths. The
    path is the backend `compute.method` names (`sample_effect.engine.backends`); `plans` keeps
    the ghost self-check results (default: the cache the model carries).
    """
    run = ScoringRun(model, params, examples, update, state, compute, objective, plans)
    return score(run, target, InMemoryOutput())


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

        return load_trainer_optimizer_state(optimizer_state, model, chosen, accumulation_dtype(dtype), update.rule)
    return load_optimizer_state(
        optimizer_state, chosen, accumulation_dtype(dtype), model_names={n for n, _ in model.named_parameters()},
        rule=update.rule,
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
) -> Effects:
    """Like `score_examples` but returns the unranked `Effects` (effects in input order)."""
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
    return score(ScoringRun(model, chosen, tokenized, update, state, compute), target, InMemoryOutput())


@dataclass(frozen=True)
class ScoringConfig:
    """The settings of one scorer besides the model, data and target: what `score_examples_result` takes.

    Bundled so that code scoring the same examples many times (rank stability) passes one object.
    """

    update: UpdateConfig = field(default_factory=UpdateConfig)
    compute: ComputeConfig = field(default_factory=ComputeConfig)
    params: str | None = None
    optimizer_state: str | os.PathLike | OptimizerState | None = None
    max_length: int | None = None

    def result(self, model: torch.nn.Module, tokenizer: Any, examples: Sequence[Example] | Sequence[TokenizedExample],
               target: Target) -> Effects:
        """`score_examples_result` with these settings."""
        return score_examples_result(model, tokenizer, examples, target, self.update, self.params,
                                     self.optimizer_state, self.compute, self.max_length)
