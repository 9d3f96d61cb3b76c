"""Plain SGD (no momentum), as `torch.optim.SGD` steps: d = -(g + wd theta)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch

from sample_effect.errors import SampleEffectError
from sample_effect.update.rules import ParamHyper, ParamState, UpdateRule, decoupled_decay_dot

__all__ = ["SGD"]


class SGD(UpdateRule, name="sgd"):
    """torch.optim.SGD without momentum: the L2 weight decay is added to the gradient; no state."""

    is_linear = True

    def step_with_state(
        self, grad: torch.Tensor, param: torch.Tensor, hyper: ParamHyper, state: ParamState | None = None
    ) -> tuple[torch.Tensor, ParamState]:
        """(-(g + wd theta), the state with its step count advanced)."""
        wd = hyper.weight_decay
        d = -(grad + wd * param) if wd else -grad
        return d, ParamState(step=(state.step if state else 0.0) + 1)

    def effect_rows(
        self,
        grad: torch.Tensor,
        param: torch.Tensor,
        target: torch.Tensor,
        hyper: ParamHyper,
        state: ParamState | None = None,
        want_sq_norms: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(-<g_e, G> per row, ||g_e||^2 if asked); the decay term is `shared_dot`."""
        sq = torch.linalg.vector_norm(grad.flatten(1), dim=1).square() if want_sq_norms else None
        return -(grad.flatten(1) @ target.flatten().to(grad.dtype)), sq

    def shared_dot(self, param: torch.Tensor, target: torch.Tensor, hyper: ParamHyper) -> float:
        """-wd <theta, G>."""
        return decoupled_decay_dot(param, target, hyper.weight_decay)

    def recognises(self, optimizer: torch.optim.Optimizer, group: Mapping[str, Any]) -> bool:
        """torch.optim.SGD; momentum and Nesterov are refused."""
        if not isinstance(optimizer, torch.optim.SGD):
            return False
        if group.get("momentum", 0) or group.get("nesterov", False):
            raise SampleEffectError("SGD with momentum is not supported (only plain SGD, Adam and AdamW)")
        return True

    def torch_optimizer(
        self, params: Iterable[torch.nn.Parameter], lr: float, hyper: ParamHyper
    ) -> torch.optim.Optimizer:
        """torch.optim.SGD with the weight decay."""
        return torch.optim.SGD(params, lr=lr, weight_decay=hyper.weight_decay)
