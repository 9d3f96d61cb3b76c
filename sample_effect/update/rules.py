"""The update-rule interface and its registry: what every simulated optimiser provides.

An `UpdateRule` turns one (already clipped) gradient into the parameter change of one optimiser
step per unit learning rate, d = delta_theta / lr, from a per-parameter state. A subclass
declared with a name (`class Lion(UpdateRule, name="lion")`) registers itself. One module per
optimiser family (`update/sgd.py`, `update/adam.py`, `update/lion.py`), each imported once by
`sample_effect/update/__init__.py` to register it: adding an optimiser is one new module, its
import line there and its oracle test. Callers ask the rule about itself (`is_linear`,
`needs_state`) instead of comparing optimiser names.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from sample_effect.errors import SampleEffectError

__all__ = [
    "CLIP_EPS",
    "ParamHyper",
    "ParamState",
    "UpdateRule",
    "clip_by_norm",
    "clip_coefficients",
    "decoupled_decay_dot",
    "get_update_rule",
    "rule_for_torch_optimizer",
    "update_rules",
]

CLIP_EPS = 1e-6  # torch.nn.utils.clip_grad_norm_ divides by (total_norm + 1e-6)

_REGISTRY: dict[str, UpdateRule] = {}


@dataclass
class ParamHyper:
    """Resolved per-parameter hyper-parameters (a state file may hold several parameter groups)."""

    beta1: float
    beta2: float
    eps: float
    weight_decay: float


@dataclass
class ParamState:
    """One parameter's optimiser state before a step: its step count and the rule's named tensors.

    `tensors` is keyed by the rule's `state_keys` (Adam: exp_avg, exp_avg_sq; Lion: exp_avg), the
    names torch's state_dict uses; a key that is missing reads as zeros (a fresh optimiser).
    """

    step: float = 0.0
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)

    def get(self, key: str) -> torch.Tensor | None:
        """The state tensor named `key`, or None (zeros) when the state has none."""
        return self.tensors.get(key)


class UpdateRule:
    """One optimiser's simulated step. Subclass with `name="..."` to register it.

    Class attributes say what callers may rely on: `is_linear` (d = -(g + wd theta), plain SGD:
    effects are plain dot products and batch noise is second order only), `state_keys` (the
    tensors it keeps per parameter, named as in a torch state_dict entry and in `ParamState.tensors`;
    none means it keeps no state) and the
    torch defaults used when neither the config nor a state's parameter group sets a value.
    """

    name: ClassVar[str] = ""
    is_linear: ClassVar[bool] = False
    state_keys: ClassVar[tuple[str, ...]] = ()
    default_betas: ClassVar[tuple[float, float]] = (0.9, 0.999)
    default_eps: ClassVar[float] = 1e-8
    default_weight_decay: ClassVar[float] = 0.0

    def __init_subclass__(cls, name: str | None = None, **kwargs: Any) -> None:
        """Register `cls()` under `name` (a subclass without a name is abstract and not registered)."""
        super().__init_subclass__(**kwargs)
        if name is None:
            return
        if name in _REGISTRY:
            raise SampleEffectError(f"update rule '{name}' is registered twice")
        cls.name = name
        _REGISTRY[name] = cls()

    def __repr__(self) -> str:
        return f"<update rule '{self.name}'>"

    @property
    def needs_state(self) -> bool:
        """Whether the rule keeps moments, so an optimiser state (`--optimizer-state`) changes its step."""
        return bool(self.state_keys)

    def init_state(self, param: torch.Tensor) -> ParamState:
        """The state of a fresh optimiser for `param`: step 0 and zero moments, as torch creates it."""
        return ParamState(0.0, {k: torch.zeros_like(param) for k in self.state_keys})

    def step_with_state(
        self, grad: torch.Tensor, param: torch.Tensor, hyper: ParamHyper, state: ParamState | None = None
    ) -> tuple[torch.Tensor, ParamState]:
        """(d, the state after the step) for a clipped gradient `grad` (one or a batch of rows [E, *shape])."""
        raise NotImplementedError

    def step(
        self, grad: torch.Tensor, param: torch.Tensor, hyper: ParamHyper, state: ParamState | None = None
    ) -> torch.Tensor:
        """d = delta_theta / lr for an already clipped gradient; rows of a batch [E, *shape] step independently."""
        return self.step_with_state(grad, param, hyper, state)[0]

    def effect_rows(
        self,
        grad: torch.Tensor,
        param: torch.Tensor,
        target: torch.Tensor,
        hyper: ParamHyper,
        state: ParamState | None = None,
        want_sq_norms: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(<d_e, G> less `shared_dot`, ||grad_e||^2 if asked) per row of grad [e, *shape]; grad may be overwritten.

        The default takes the reference `step`; a rule with a fused kernel overrides it.
        """
        sq = torch.linalg.vector_norm(grad.flatten(1), dim=1).square() if want_sq_norms else None
        d = self.step(grad, param, hyper, state)
        return d.flatten(1) @ target.flatten().to(d.dtype), sq

    def shared_dot(self, param: torch.Tensor, target: torch.Tensor, hyper: ParamHyper) -> float:
        """The part of <d, G> that is the same for every example and that `effect_rows` leaves out (default 0)."""
        return 0.0

    def recognises(self, optimizer: torch.optim.Optimizer, group: Mapping[str, Any]) -> bool:
        """Whether `optimizer`'s parameter `group` steps with this rule; raises for a variant it cannot simulate."""
        return False

    def torch_optimizer(
        self, params: Iterable[torch.nn.Parameter], lr: float, hyper: ParamHyper
    ) -> torch.optim.Optimizer:
        """A real optimiser that takes this rule's step (for checks against actual training)."""
        raise SampleEffectError(f"optimizer '{self.name}' has no real optimiser to train with")


def update_rules() -> dict[str, UpdateRule]:
    """Every registered update rule by name, in registration order."""
    return dict(_REGISTRY)


def get_update_rule(name: str) -> UpdateRule:
    """The rule registered as `name`; SampleEffectError naming the registered ones otherwise."""
    rule = _REGISTRY.get(name) if isinstance(name, str) else None
    if rule is None:
        raise SampleEffectError(f"unknown optimizer '{name}'; choose one of {', '.join(_REGISTRY)}")
    return rule


def rule_for_torch_optimizer(optimizer: torch.optim.Optimizer, group: Mapping[str, Any]) -> UpdateRule | None:
    """The registered rule a torch optimiser's parameter group steps with, or None."""
    return next((r for r in _REGISTRY.values() if r.recognises(optimizer, group)), None)


def clip_coefficients(sq_norms: torch.Tensor, clip: float | None) -> torch.Tensor:
    """Per-example factor min(1, C / (||g|| + 1e-6)) applied before the optimiser, as clip_grad_norm_ does."""
    if clip is None:
        return torch.ones_like(sq_norms)
    return (clip / (sq_norms.sqrt() + CLIP_EPS)).clamp(max=1.0)


def clip_by_norm(g: torch.Tensor, max_norm: float | None) -> torch.Tensor:
    """One gradient vector clipped to `max_norm` as clip_grad_norm_ clips a batch (unchanged for None)."""
    if max_norm is None:
        return g
    return g * min(1.0, max_norm / (float(g.norm()) + CLIP_EPS))


def decoupled_decay_dot(param: torch.Tensor, target: torch.Tensor, weight_decay: float) -> float:
    """-wd <theta, G>: a decoupled (or SGD) weight decay's part of an effect, the same for every example."""
    if not weight_decay:
        return 0.0
    return -weight_decay * float((param.to(target.dtype) * target).sum())
