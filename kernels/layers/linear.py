"""Linear and transformers' Conv1D weights: g = B^T A (Linear, W [out, in]) or A^T B (Conv1D, W [in, out]).

A [N, in] are the layer's inputs and B [N, out] the loss gradients at its outputs, so the ghost
inner product is one GEMM, sum((A G^T) * B), and the Gram form of the squared norm is
sum((A A^T) * (B B^T)) at N^2 (in + out) multiply-adds, no [E, out, in] tensor formed.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from .base import Factor, LayerRule, register_layer_rule
from .bias import BiasRule


@register_layer_rule(torch.nn.Linear)
class LinearRule(LayerRule):
    """nn.Linear (and subclasses): weight 'outer', bias 'sum'."""

    kind = "outer"

    def param_kinds(self, module: torch.nn.Module) -> Mapping[str, str]:
        """Weight and bias."""
        return {"weight": self.kind, "bias": BiasRule.kind}

    def capture(self, module: torch.nn.Module, pname: str, x: torch.Tensor, gy: torch.Tensor) -> Factor:
        """A = the layer's input, B = the gradient at its output."""
        return Factor(self.kind, x, gy, getattr(module, pname).shape)

    def dot(self, f: Factor, g: torch.Tensor) -> torch.Tensor:
        """sum((A G^T) * B)."""
        return ((f.a @ g.T) * f.b).sum((1, 2))  # type: ignore[operator]

    def materialise(self, f: Factor, rows: slice) -> torch.Tensor:
        """B^T A per example."""
        return torch.bmm(f.b[rows].transpose(1, 2), f.a[rows])  # type: ignore[index]

    def total(self, f: Factor) -> torch.Tensor:
        """B^T A over all examples' slots at once."""
        return f.b.reshape(-1, f.b.shape[-1]).T @ f.a.reshape(-1, f.a.shape[-1])  # type: ignore[union-attr]

    def gram(self, f1: Factor, f2: Factor) -> torch.Tensor | None:
        """sum((A1 A2^T) * (B1 B2^T)) for two uses of this kind; other pairs have no form here."""
        if f1.kind != self.kind or f2.kind != self.kind:
            return None
        return ((f1.a @ f2.a.transpose(1, 2)) * (f1.b @ f2.b.transpose(1, 2))).sum((1, 2))  # type: ignore[union-attr]

    def gram_cost(self, f1: Factor, f2: Factor) -> float | None:
        """N1 N2 (in + out)."""
        if f1.kind != self.kind or f2.kind != self.kind:
            return None
        return f1.slots() * f2.slots() * (f1.a.shape[-1] + f1.b.shape[-1])  # type: ignore[union-attr]

    def materialise_cost(self, f: Factor) -> float:
        """N in out."""
        return f.slots() * f.numel()

    def dims(self, w: torch.Tensor) -> tuple[int, int]:
        """(in, out) of a weight of this layout."""
        return int(w.shape[1]), int(w.shape[0])

    def meta_factor(self, module: torch.nn.Module, pname: str, rows: int, slots: int) -> Factor:
        """A [rows, slots, in], B [rows, slots, out] on the meta device."""
        d_in, d_out = self.dims(module.weight)
        a = torch.empty(rows, slots, d_in, device="meta")
        return Factor(self.kind, a, torch.empty(rows, slots, d_out, device="meta"), getattr(module, pname).shape)


def _is_conv1d(module: torch.nn.Module) -> bool:
    """transformers' GPT-2 Conv1D (y = x W + b, W [in, out]), recognised by class name and its `nf`
    attribute, as before, so that copies of the class in remote-code models match too."""
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")


@register_layer_rule(match=_is_conv1d)
class Conv1DRule(LinearRule):
    """transformers' Conv1D: weight 'outer_t' (g = A^T B), bias 'sum'."""

    kind = "outer_t"

    def dot(self, f: Factor, g: torch.Tensor) -> torch.Tensor:
        """sum((A G) * B)."""
        return ((f.a @ g) * f.b).sum((1, 2))  # type: ignore[operator]

    def materialise(self, f: Factor, rows: slice) -> torch.Tensor:
        """A^T B per example."""
        return torch.bmm(f.a[rows].transpose(1, 2), f.b[rows])  # type: ignore[index]

    def total(self, f: Factor) -> torch.Tensor:
        """A^T B over all examples' slots at once."""
        return f.a.reshape(-1, f.a.shape[-1]).T @ f.b.reshape(-1, f.b.shape[-1])  # type: ignore[union-attr]

    def dims(self, w: torch.Tensor) -> tuple[int, int]:
        """(in, out) of a [in, out] weight."""
        return int(w.shape[0]), int(w.shape[1])
