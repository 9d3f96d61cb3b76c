"""The elementwise weight of LayerNorm / RMSNorm-style layers: g = sum_n B * xhat.

xhat, the normalised input, is recomputed after the backward by calling the module itself with
unit weight (and zero bias), so whatever normalisation a model's norm class does is reproduced.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch.func import functional_call

from .base import Factor, LayerRule, register_layer_rule
from .bias import BiasRule


def _norm_by_name(module: torch.nn.Module) -> bool:
    """Norm classes defined in transformers (Qwen2RMSNorm, LlamaRMSNorm, ...) and torch's RMSNorm are
    recognised by class name, as before: there is no common base class to register."""
    name = type(module).__name__
    return name.endswith("RMSNorm") or name.endswith("LayerNorm")


@register_layer_rule(torch.nn.LayerNorm, match=_norm_by_name)
class NormRule(LayerRule):
    """A norm with a 1-D elementwise weight: weight 'scale' (a: xhat), bias 'sum'."""

    kind = "scale"

    def param_kinds(self, module: torch.nn.Module) -> Mapping[str, str]:
        """Weight and bias, if the weight is a 1-D elementwise scale; nothing otherwise."""
        w = getattr(module, "weight", None)
        if w is None or w.dim() != 1:
            return {}
        return {"weight": self.kind, "bias": BiasRule.kind}

    def capture(self, module: torch.nn.Module, pname: str, x: torch.Tensor, gy: torch.Tensor) -> Factor:
        """A = xhat, recomputed exactly as the module does with unit weight; B = the output gradient."""
        with torch.no_grad():
            unit = {"weight": torch.ones_like(module.weight)}
            if getattr(module, "bias", None) is not None:
                unit["bias"] = torch.zeros_like(module.bias)
            xhat = functional_call(module, unit, (x,))
        return Factor(self.kind, xhat, gy, getattr(module, pname).shape)

    def dot(self, f: Factor, g: torch.Tensor) -> torch.Tensor:
        """(sum_n B * xhat) . G."""
        return (f.b * f.a).sum(1) @ g  # type: ignore[operator]

    def materialise(self, f: Factor, rows: slice) -> torch.Tensor:
        """sum_n B * xhat per example."""
        return (f.b[rows] * f.a[rows]).sum(1)  # type: ignore[index]

    def total(self, f: Factor) -> torch.Tensor:
        """sum of B * xhat over all slots of all examples."""
        return (f.b.reshape(-1, f.b.shape[-1]) * f.a.reshape(-1, f.a.shape[-1])).sum(0)  # type: ignore[union-attr]

    def meta_factor(self, module: torch.nn.Module, pname: str, rows: int, slots: int) -> Factor:
        """xhat and B [rows, slots, size] on the meta device."""
        shape = getattr(module, pname).shape
        a = torch.empty(rows, slots, shape[0], device="meta")
        return Factor(self.kind, a, torch.empty(rows, slots, shape[0], device="meta"), shape)
