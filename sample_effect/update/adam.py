"""Adam (L2 weight decay in the gradient) and AdamW (decoupled decay), as `torch.optim.Adam/AdamW` step.

One reference step for both, op for op as torch's single-tensor implementation (no amsgrad), and
the fused per-layer kernel `sample_effect.kernels.adam.adam_effect_rows` for the engine.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch

from sample_effect.errors import SampleEffectError
from sample_effect.kernels.adam import adam_effect_rows
from sample_effect.update.rules import ParamHyper, ParamState, UpdateRule, decoupled_decay_dot

__all__ = ["Adam", "AdamW"]


class Adam(UpdateRule, name="adam"):
    """torch.optim.Adam: weight decay added to the gradient (L2), bias correction at step t = state.step + 1."""

    decoupled = False
    state_keys = ("exp_avg", "exp_avg_sq")

    def step_with_state(
        self, grad: torch.Tensor, param: torch.Tensor, hyper: ParamHyper, state: ParamState | None = None
    ) -> tuple[torch.Tensor, ParamState]:
        """(d, the moments and step count after it); rows of grad [E, *shape] each step from `state`."""
        st = state or ParamState()
        wd = hyper.weight_decay
        if not self.decoupled and wd:
            grad = grad + wd * param
        b1, b2 = hyper.beta1, hyper.beta2
        m0, v0 = st.get("exp_avg"), st.get("exp_avg_sq")
        m0 = torch.zeros_like(param) if m0 is None else m0
        v0 = torch.zeros_like(param) if v0 is None else v0
        m = torch.lerp(m0, grad, 1 - b1)  # torch: exp_avg.lerp_(grad, 1 - beta1)
        v = torch.addcmul(v0 * b2, grad, grad, value=1 - b2)  # torch: exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        t = st.step + 1
        bias_correction1 = 1 - b1**t
        bias_correction2_sqrt = (1 - b2**t) ** 0.5
        denom = v.sqrt() / bias_correction2_sqrt + hyper.eps
        d = -(m / denom) / bias_correction1
        if self.decoupled and wd:
            d = d - wd * param  # torch: param.mul_(1 - lr * weight_decay) before the Adam step
        return d, ParamState(step=t, tensors={"exp_avg": m, "exp_avg_sq": v})

    def effect_rows(
        self,
        grad: torch.Tensor,
        param: torch.Tensor,
        target: torch.Tensor,
        hyper: ParamHyper,
        state: ParamState | None = None,
        want_sq_norms: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The fused kernel `adam_effect_rows` (grad is overwritten)."""
        st = state or ParamState()
        return adam_effect_rows(
            grad, param, target, self.decoupled, hyper.beta1, hyper.beta2, hyper.eps, hyper.weight_decay,
            st.get("exp_avg"), st.get("exp_avg_sq"), st.step, want_sq_norms=want_sq_norms,
        )

    def recognises(self, optimizer: torch.optim.Optimizer, group: Mapping[str, Any]) -> bool:
        """torch.optim.Adam / AdamW whose group decouples the decay as this rule does; amsgrad is refused."""
        if not isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)):  # older torch: AdamW is its own class
            return False
        if group.get("amsgrad", False):
            raise SampleEffectError(f"{type(optimizer).__name__} with amsgrad=True is not supported")
        return bool(group.get("decoupled_weight_decay", isinstance(optimizer, torch.optim.AdamW))) == self.decoupled

    def torch_optimizer(
        self, params: Iterable[torch.nn.Parameter], lr: float, hyper: ParamHyper
    ) -> torch.optim.Optimizer:
        """torch.optim.Adam (AdamW for the decoupled rule) with these betas, eps and weight decay."""
        cls = torch.optim.AdamW if self.decoupled else torch.optim.Adam
        return cls(params, lr=lr, betas=(hyper.beta1, hyper.beta2), eps=hyper.eps, weight_decay=hyper.weight_decay)


class AdamW(Adam, name="adamw"):
    """torch.optim.AdamW: Adam with the weight decay applied to theta (decoupled); torch's default wd 0.01."""

    decoupled = True
    default_weight_decay = 0.01

    def shared_dot(self, param: torch.Tensor, target: torch.Tensor, hyper: ParamHyper) -> float:
        """-wd <theta, G>, the decoupled decay's part of every example's effect."""
        return decoupled_decay_dot(param, target, hyper.weight_decay)
