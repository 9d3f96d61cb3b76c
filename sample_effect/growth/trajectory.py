"""The simulated optimiser step of growth/: U(clip(g)) per unit lr for one gradient dict, from an optimiser state.

Used for one prompt group's sample effect, for a batch's mean gradient, and (with the state carried)
for the steps of a replayed run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from sample_effect.update.optim import OptimizerState, UpdateConfig, clip_coefficients
from sample_effect.update.rules import ParamState


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


def vector_dot(d: Mapping[str, torch.Tensor], vector: Mapping[str, torch.Tensor]) -> float:
    """<d, vector> over d's parameters, accumulated in d's dtype."""
    return sum(float(torch.dot(v.flatten(), vector[nm].to(v.dtype).flatten())) for nm, v in d.items())
