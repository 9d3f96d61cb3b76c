"""Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms").

Per unit lr the step is d = -(sign(beta1 m + (1 - beta1) g) + wd theta), then the moment moves
on: m <- beta2 m + (1 - beta2) g (defaults beta1 0.9, beta2 0.99, decoupled weight decay 0).
torch has no Lion, so `LionOptimizer` is a small torch optimiser that takes this rule's step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch

from sample_effect.update.rules import ParamHyper, ParamState, UpdateRule

__all__ = ["Lion", "LionOptimizer"]


class Lion(UpdateRule, name="lion"):
    """Lion: the sign of an interpolated momentum, decoupled weight decay; one moment (exp_avg), no bias correction."""

    state_keys = ("exp_avg",)
    default_betas = (0.9, 0.99)

    def step_with_state(
        self, grad: torch.Tensor, param: torch.Tensor, hyper: ParamHyper, state: ParamState | None = None
    ) -> tuple[torch.Tensor, ParamState]:
        """(d, the moment and step count after it); rows of grad [E, *shape] each step from `state`."""
        st = state or ParamState()
        b1, b2, wd = hyper.beta1, hyper.beta2, hyper.weight_decay
        m0 = st.get("exp_avg")
        m0 = torch.zeros_like(param) if m0 is None else m0
        d = -torch.sign(b1 * m0 + (1 - b1) * grad)
        if wd:
            d = d - wd * param
        return d, ParamState(step=st.step + 1, tensors={"exp_avg": b2 * m0 + (1 - b2) * grad})

    def recognises(self, optimizer: torch.optim.Optimizer, group: Mapping[str, Any]) -> bool:
        """`LionOptimizer`."""
        return isinstance(optimizer, LionOptimizer)

    def torch_optimizer(
        self, params: Iterable[torch.nn.Parameter], lr: float, hyper: ParamHyper
    ) -> torch.optim.Optimizer:
        """A `LionOptimizer` with these betas and weight decay."""
        return LionOptimizer(params, lr=lr, betas=(hyper.beta1, hyper.beta2), weight_decay=hyper.weight_decay)


class LionOptimizer(torch.optim.Optimizer):
    """Lion as a torch optimiser (state: exp_avg, step), stepping with the `Lion` rule."""

    def __init__(
        self,
        params: Iterable[torch.nn.Parameter] | Iterable[dict],
        lr: float = 1e-4,
        betas: tuple[float, float] = Lion.default_betas,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__(params, {"lr": lr, "betas": betas, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One Lion step on every parameter with a gradient."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        rule = Lion()
        for group in self.param_groups:
            hyper = ParamHyper(float(group["betas"][0]), float(group["betas"][1]), 0.0, float(group["weight_decay"]))
            for p in group["params"]:
                if p.grad is None:
                    continue
                st = self.state[p]
                prev = ParamState(float(st.get("step", 0.0)), {k: st[k] for k in rule.state_keys if k in st})
                d, new = rule.step_with_state(p.grad, p, hyper, prev)
                p.add_(d, alpha=group["lr"])
                st["step"] = torch.tensor(new.step)
                st.update(new.tensors)
        return loss
