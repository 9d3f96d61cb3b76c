"""Effects toward many targets in one engine pass: E[i, j] = <d(s_i), G_j>.

Scoring n examples toward T target directions one at a time recomputes every per-example
gradient T times. `compute_effect_matrix` asks the engine once for each example's simulated update
per unit lr d(s) (clipped, optimiser-transformed: the rows `sample-effect project` projects) and
dots it, parameter by parameter, with all T directions at once. Nothing is projected, so column j
equals `compute_effects` toward G_j up to summation order. Memory: one parameter's [chunk, numel]
update block at a time plus the T directions.

Used by `validate lds` (one column per target example) and by trajectory scoring (one engine pass
per checkpoint).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

import numpy as np
import torch

from sample_effect.data.examples import TokenizedExample
from sample_effect.engine.backends import BatchEffects, UpdateRows
from sample_effect.engine.core import ComputeConfig, PlanCache
from sample_effect.engine.vectors import TargetVector
from sample_effect.errors import SampleEffectError
from sample_effect.objectives.base import SFT, Objective
from sample_effect.scoring.run import Output, ScoringRun, score
from sample_effect.targets.core import Target
from sample_effect.update.optim import OptimizerState, UpdateConfig


class EffectMatrixOutput(Output[np.ndarray]):
    """Takes the backend's per-example updates and keeps their dots with T directions, [n, T] in float64."""

    rows = "updates"

    def __init__(self, targets: Sequence[Target | TargetVector]) -> None:
        if not targets:
            raise SampleEffectError("no target directions to score against")
        self.targets = list(targets)

    def open(self, run: ScoringRun, target: Target | TargetVector | None) -> tuple[TargetVector | None, list[int]]:
        """Resolve every direction over the run's parameters and stack them per parameter; all examples pending."""
        vectors = [run.resolve(t) for t in self.targets]
        for v in vectors:
            if not v.all_finite():
                raise SampleEffectError(f"the target direction '{v.kind}' contains NaN or Inf")
        self.stacked = {n: torch.stack([v.vector[n].reshape(-1) for v in vectors]) for n in run.params}
        self.out = np.full((len(run.examples), len(vectors)), np.nan)
        return None, list(range(len(run.examples)))

    def write(self, rows: BatchEffects | UpdateRows) -> None:
        """Add one batch's <d(s), G_j> over every parameter."""
        assert isinstance(rows, UpdateRows)
        acc: torch.Tensor | None = None
        for name, d in rows.updates:
            g = self.stacked[name]
            part = d.reshape(d.shape[0], -1).to(g.dtype) @ g.to(d.device).T
            acc = part if acc is None else acc + part
        if acc is None:
            raise SampleEffectError("the engine formed no per-example updates (no chosen parameters?)")
        self.out[rows.indices] = acc.double().cpu().numpy()

    def finish(self) -> np.ndarray:
        """The [n, T] matrix, in the examples' and the targets' order."""
        if not np.isfinite(self.out).all():
            bad = int((~np.isfinite(self.out)).any(1).sum())
            raise SampleEffectError(f"{bad} example(s) have a non-finite effect toward some target; check the data")
        return self.out


def compute_effect_matrix(
    model: torch.nn.Module,
    params: Mapping[str, torch.Tensor],
    examples: Sequence[TokenizedExample],
    targets: Sequence[Target | TargetVector],
    update: UpdateConfig,
    state: OptimizerState | None = None,
    compute: ComputeConfig | None = None,
    objective: Objective = SFT,
    plans: PlanCache | None = None,
) -> np.ndarray:
    """[n, T] effects per unit lr of every example toward every target, from one pass of the engine's ghost backend.

    Column j equals `compute_effects(..., target=targets[j]).effect` (the same clipping, optimiser
    step and state); the updates are formed once instead of T times.
    """
    if not examples:
        raise SampleEffectError("the dataset is empty")
    run = ScoringRun(model, params, examples, update, state, compute, objective, plans)
    run = replace(run, compute=replace(compute or ComputeConfig(), method="ghost"))
    return score(run, None, EffectMatrixOutput(targets))
