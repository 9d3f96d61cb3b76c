"""The one scoring path: resolve the target, run the engine's Backend over the pending examples and
hand every batch of rows to an `Output`.

An `Output` decides where rows go and which examples still need computing: `InMemoryOutput` (an
`Effects`), the sharded resumable cache (`sample_effect.store.cache.CacheOutput`) or projected
shards (`sample_effect.store.projection.ProjectionOutput`, which asks the backend for the
per-example updates instead of their effects). Everything a stored output keys itself by comes from
`ScoringRun.key`, the one `settings_key`.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import ClassVar, Generic, TypeVar

import numpy as np
import torch

from sample_effect.data.examples import TokenizedExample
from sample_effect.engine.backends import (
    Backend,
    BatchEffects,
    EffectSettings,
    UpdateRows,
    make_backend,
)
from sample_effect.engine.core import ComputeConfig, PlanCache
from sample_effect.engine.keys import settings_key
from sample_effect.engine.vectors import TargetVector
from sample_effect.errors import SampleEffectError
from sample_effect.objectives.base import SFT, Objective
from sample_effect.scoring.result import Effects
from sample_effect.targets.core import Target, resolve_target
from sample_effect.update.optim import OptimizerState, UpdateConfig

log = logging.getLogger("sample_effect")

R = TypeVar("R")


@dataclass
class ScoringRun:
    """Everything one scoring pass needs: the model, its chosen parameters, the tokenized examples and the settings."""

    model: torch.nn.Module
    params: Mapping[str, torch.Tensor]
    examples: Sequence[TokenizedExample]
    update: UpdateConfig
    state: OptimizerState | None = None
    compute: ComputeConfig | None = None
    objective: Objective = SFT
    plans: PlanCache | None = None  # ghost self-check results (None: the cache the model carries)

    def key(self, projection: object = None, target: bytes = b"") -> str:
        """The settings key of this run's results (see `sample_effect.engine.keys.settings_key`)."""
        return settings_key(self.model, self.params, self.examples, self.update, self.state,
                            self.compute or ComputeConfig(), projection, target)

    def resolve(self, target: Target | TargetVector) -> TargetVector:
        """G of `target` over this run's parameters (a resolved vector is returned as it is)."""
        if isinstance(target, TargetVector):
            return target
        return resolve_target(target, self.model, self.params, self.examples, self.compute)


class Output(ABC, Generic[R]):
    """Where the scoring path hands its rows, and which examples it still needs.

    `rows` is "effects" (the backend's `BatchEffects`) or "updates" (its `UpdateRows`, no target
    needed). `shard_size` is how many pending examples go through the backend per pass (None: all at
    once); `end_pass` follows each pass.
    """

    rows: ClassVar[str] = "effects"
    shard_size: int | None = None

    def open(self, run: ScoringRun, target: Target | TargetVector | None) -> tuple[TargetVector | None, list[int]]:
        """G (None for updates) and the indices of the examples still to compute (default: all, G resolved here)."""
        if target is None:
            raise SampleEffectError("scoring effects needs a target")
        return run.resolve(target), list(range(len(run.examples)))

    @abstractmethod
    def write(self, rows: BatchEffects | UpdateRows) -> None:
        """Take one batch of rows (indices already in the run's example numbering)."""

    def end_pass(self, indices: list[int]) -> None:
        """Called after the backend has gone through the pending examples `indices`."""

    @abstractmethod
    def finish(self) -> R:
        """What the scoring returns once every pass is done."""


def check_effects(ids: Sequence[str], effect: np.ndarray) -> None:
    """Error if every effect is non-finite; warn (naming one) if some are (they are flagged and ranked last)."""
    bad = [ids[i] for i in np.flatnonzero(~np.isfinite(effect))]
    if bad and len(bad) == len(ids):
        raise SampleEffectError("every effect is NaN or Inf; check the model weights and the data")
    if bad:
        log.warning("%d example(s) have a non-finite effect (flagged, ranked last), e.g. id '%s'", len(bad), bad[0])


def effect_result(examples: Sequence[TokenizedExample], effect: np.ndarray, loss: np.ndarray, grad_norm: np.ndarray,
                  target: TargetVector) -> Effects:
    """An `Effects` of arrays over `examples` (in their order)."""
    return Effects(
        ids=[ex.id for ex in examples], effect=effect, loss=loss, grad_norm=grad_norm,
        n_tokens=np.array([ex.n_tokens for ex in examples]), n_responses=np.array([ex.n_responses for ex in examples]),
        target=target,
    )


class EffectArrays(Output[R]):
    """An output that keeps the effects, losses and gradient norms of every example in arrays (NaN until written)."""

    def allocate(self, n: int) -> None:
        """Arrays for `n` examples, every entry NaN."""
        self.effect, self.loss, self.grad_norm = np.full(n, np.nan), np.full(n, np.nan), np.full(n, np.nan)

    def write(self, rows: BatchEffects | UpdateRows) -> None:
        """Store one batch's effects, losses and gradient norms."""
        assert isinstance(rows, BatchEffects)
        self.effect[rows.indices] = rows.effect
        self.loss[rows.indices] = rows.loss
        if rows.grad_norm is not None:
            self.grad_norm[rows.indices] = rows.grad_norm


class InMemoryOutput(EffectArrays[Effects]):
    """Collects every effect in memory and returns the `Effects` (checked for non-finite effects)."""

    def open(self, run: ScoringRun, target: Target | TargetVector | None) -> tuple[TargetVector | None, list[int]]:
        """Resolve G; every example is pending."""
        g, todo = super().open(run, target)
        self.run, self.target = run, g
        self.allocate(len(run.examples))
        return g, todo

    def finish(self) -> Effects:
        """The whole result, in input order."""
        assert self.target is not None
        check_effects([ex.id for ex in self.run.examples], self.effect)
        return effect_result(self.run.examples, self.effect, self.loss, self.grad_norm, self.target)


def _renumbered(rows: BatchEffects | UpdateRows, indices: Sequence[int]) -> BatchEffects | UpdateRows:
    """`rows` with the batch's pass-local indices mapped to the run's example numbering."""
    return replace(rows, indices=[indices[i] for i in rows.indices])


def score(run: ScoringRun, target: Target | TargetVector | None, output: Output[R]) -> R:
    """Score `run` toward `target` into `output`: the one path every scoring entry point goes through.

    The output resolves (or loads) G and says which examples are pending; the backend that
    `run.compute.method` names then goes through them, `output.shard_size` examples per pass, and
    every batch of rows (effects, or per-example updates for `rows = "updates"`) goes to the output.
    """
    run.update.validate()
    if run.compute is None:
        run = replace(run, compute=ComputeConfig())
    g, todo = output.open(run, target)
    if g is not None and not g.all_finite():
        raise SampleEffectError(f"the target direction '{g.kind}' contains NaN or Inf; nothing can be ranked against it")
    settings = EffectSettings.build(run.params, g, run.update, run.state, run.compute, run.objective, run.plans)
    backend = make_backend(run.model, run.params, settings)
    if not run.examples:
        raise SampleEffectError("the dataset is empty")
    step = output.shard_size or max(len(todo), 1)
    for s in range(0, len(todo), step):
        idx = todo[s : s + step]
        for rows in _rows(backend, output.rows, [run.examples[i] for i in idx]):
            output.write(_renumbered(rows, idx))
        output.end_pass(idx)
    return output.finish()


def _rows(backend: Backend, kind: str, examples: Sequence[TokenizedExample]) -> Iterator[BatchEffects | UpdateRows]:
    if kind == "updates":
        return backend.updates(examples)
    return backend.effects(examples)
