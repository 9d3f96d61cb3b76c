"""The one trajectory simulator of growth/: batch drawing, clipping and the update rule's step, state carried.

`StepContext` holds what every simulated step needs (the scored parameters, the update, the
optimiser state it starts from, the resolved hyper-parameters); `StepContext.step` is U(clip(g))
per unit lr for one gradient dict, the step used for a prompt group's sample effect and for a
batch's mean gradient. `draw_batches` draws batches as the trainers do (consecutive slices of a
stream of seeded permutations) and `simulate` replays a run of steps with the optimiser state
carried from one to the next: the SFT curves (`growth.sft`) and the RL replay (`growth.rl_batches`)
both go through it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from sample_effect.growth.rows import LazyRows
from sample_effect.models.loading import accumulation_dtype
from sample_effect.update.optim import OptimizerState, UpdateConfig, clip_coefficients
from sample_effect.update.rules import ParamHyper, ParamState

Gradient = Mapping[str, torch.Tensor]


@dataclass
class StepContext:
    """The scored parameters, the update, the optimiser state it starts from and its per-parameter hyper-parameters.

    Built once (`build`) and passed on, so every simulated step of a prediction uses the same resolved settings.
    """

    params: Mapping[str, torch.Tensor]
    update: UpdateConfig
    state: OptimizerState
    hypers: dict[str, ParamHyper]

    @classmethod
    def build(cls, params: Mapping[str, torch.Tensor], update: UpdateConfig,
              state: OptimizerState | None = None) -> StepContext:
        """The context of `update` from `state` (None: a fresh optimiser) over `params`."""
        state = state or OptimizerState()
        return cls(params, update, state, {n: state.hyper(n, update) for n in params})

    @property
    def names(self) -> list[str]:
        """The parameter names, in order."""
        return list(self.params)

    @property
    def first(self) -> torch.Tensor:
        """The first parameter (its device and dtype stand for all of them)."""
        return next(iter(self.params.values()))

    @property
    def device(self) -> torch.device:
        """Where the parameters live."""
        return self.first.device

    @property
    def dtype(self) -> torch.dtype:
        """The accumulation dtype of gradients and updates over these parameters."""
        return accumulation_dtype(self.first.dtype)

    @property
    def nonlinear(self) -> bool:
        """Whether the step is not linear in the gradient (a stateful rule such as Adam, or clipping)."""
        return not self.update.rule.is_linear or self.update.clip is not None

    def start_states(self, names: Sequence[str] | None = None) -> dict[str, ParamState]:
        """Per parameter, the state the first step starts from."""
        return {nm: self.state.param_state(nm) for nm in (self.params if names is None else names)}

    def step(self, g: Gradient) -> tuple[dict[str, torch.Tensor], float]:
        """U(clip(g)) per unit lr for one gradient (a dict over parameters) from the start state, and ||g||.

        Clipping is by the gradient's own norm over all its parameters, as `clip_grad_norm_` clips
        a batch: used for one prompt group (the sample effect) and for a batch's mean gradient.
        """
        step, norm, _ = self.step_with_state(g, self.start_states(list(g)))
        return step, norm

    def step_with_state(
        self, g: Gradient, states: Mapping[str, ParamState]
    ) -> tuple[dict[str, torch.Tensor], float, dict[str, ParamState]]:
        """`step` from explicit per-parameter states, also returning the states after the step.

        (U(clip(g)) per unit lr, ||g||, the new states): what a run of several simulated steps
        carries from one step to the next (`simulate`), as the trainer's optimiser does.
        """
        update = self.update
        sq = sum((t.double() ** 2).sum() for t in g.values())
        coef = float(clip_coefficients(sq.reshape(1), update.clip)[0])
        step, after = {}, {}
        for nm, t in g.items():
            d, after[nm] = update.rule.step_with_state(
                (t * coef if update.clip is not None else t).unsqueeze(0), self.params[nm].detach().to(t.dtype),
                self.hypers[nm], states[nm],
            )
            step[nm] = d[0]
        return step, float(sq.sqrt()), after


class SimulatedSteps(LazyRows):
    """U(clip(g_i)) per unit lr of each gradient of `grads`, computed when item i is read (one at a time).

    The step is a deterministic function of the gradient, so reading item i twice gives the same
    tensors, and the dense updates need no storage of their own.
    """

    def __init__(self, grads: Sequence[Gradient], ctx: StepContext) -> None:
        self.grads, self.ctx = grads, ctx

    def __len__(self) -> int:
        return len(self.grads)

    def row(self, i: int) -> dict[str, torch.Tensor]:
        """U(clip(g_i)) per unit lr."""
        return self.ctx.step(self.grads[i])[0]


def vector_dot(d: Gradient, vector: Gradient) -> float:
    """<d, vector> over d's parameters, accumulated in d's dtype."""
    return sum(float(torch.dot(v.flatten(), vector[nm].to(v.dtype).flatten())) for nm, v in d.items())


def draw_batches(n: int, size: int, count: int, permutation: Callable[[int], list[int]]) -> list[list[int]]:
    """`count` batches of `size` indices out of n, as the trainers draw them.

    Consecutive slices of a stream of permutations (`permutation(n)`, seeded by the caller), a new
    permutation appended whenever fewer than `size` indices remain.
    """
    order: list[int] = []
    out = []
    for _ in range(count):
        if len(order) < size:
            order += permutation(n)
        out.append(order[:size])
        order = order[size:]
    return out


def simulate(ctx: StepContext, lrs: Sequence[float], gradient: Callable[[int], Gradient | None],
             direction: Gradient) -> np.ndarray:
    """Per step t, the first-order target change lr_t <d_t, G> of a simulated run.

    `gradient(t)` is step t's (unclipped) batch gradient, None when the trainer takes no step;
    each step is clipped and taken from the optimiser state the previous steps left.
    """
    states = ctx.start_states()
    out = np.zeros(len(lrs))
    for t, lr in enumerate(lrs):
        g = gradient(t)
        if g is None:
            continue
        d, _, states = ctx.step_with_state(g, states)
        out[t] = lr * vector_dot(d, direction)
    return out
