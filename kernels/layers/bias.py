"""Biases (of Linear, Conv1D and norm layers): A = 1, so g = sum_n B over the token slots."""

from __future__ import annotations

import torch

from .base import Factor, LayerRule, register_layer_rule


@register_layer_rule()  # by kind only: the layer rules that own a bias hand it this kind
class BiasRule(LayerRule):
    """A bias added to a layer's output: kind 'sum', no A factor kept."""

    kind = "sum"

    def param_kinds(self, module: torch.nn.Module) -> dict[str, str]:
        """Registered for no module type; the owning layer's rule names this kind for its bias."""
        return {"bias": self.kind}

    def capture(self, module: torch.nn.Module, pname: str, x: torch.Tensor, gy: torch.Tensor) -> Factor:
        """Only B is needed."""
        return Factor(self.kind, None, gy, getattr(module, pname).shape)

    def dot(self, f: Factor, g: torch.Tensor) -> torch.Tensor:
        """(sum_n B) . G."""
        return f.b.sum(1) @ g

    def materialise(self, f: Factor, rows: slice) -> torch.Tensor:
        """sum_n B per example."""
        return f.b[rows].sum(1)

    def total(self, f: Factor) -> torch.Tensor:
        """sum of B over all slots of all examples."""
        return f.b.reshape(-1, f.b.shape[-1]).sum(0)

    def meta_factor(self, module: torch.nn.Module, pname: str, rows: int, slots: int) -> Factor:
        """B [rows, slots, size] on the meta device."""
        shape = getattr(module, pname).shape
        meta = torch.empty(rows, slots, shape[0], device="meta")
        return Factor(self.kind, None, meta, shape)
