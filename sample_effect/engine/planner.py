"""What the engine will do for a model, data and update, and how much memory it expects: `rank --explain`.

The plan is read off the same functions the engine runs (coverage rules, chunk planner, per-layer
norm choice and block sizes), evaluated on shape-only ("meta") tensors, so it never disagrees
with what a run does. Each backend (`sample_effect.engine.backends`) gives its own plan; this
module asks the one `ComputeConfig.method` names.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from sample_effect.data.examples import TokenizedExample
from sample_effect.engine.backends import LayerPlan, Plan, backend_class
from sample_effect.engine.core import ComputeConfig, PlanCache
from sample_effect.update.optim import UpdateConfig

__all__ = ["LayerPlan", "Plan", "make_plan"]


def make_plan(
    model: torch.nn.Module,
    params: Mapping[str, torch.Tensor],
    examples: Sequence[TokenizedExample],
    update: UpdateConfig,
    compute: ComputeConfig,
    plans: PlanCache | None = None,
) -> Plan:
    """The engine's plan for scoring `examples` with `update` under `compute` (no computation).

    The ghost plan carries the self-check result known so far (`Plan.ghost`), read from `plans`
    (default: the cache the model carries). An unknown method is a SampleEffectError naming the choices.
    """
    return backend_class(compute.method).plan(model, params, examples, update, compute, plans)
