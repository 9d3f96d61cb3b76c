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

ACC = torch.float32  # what a narrow (bfloat16 / float16) factor's results accumulate in


def _bmm_acc(f: Factor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """torch.bmm(x, y); for a narrow factor the product runs in `f.gemm` and comes back in float32."""
    out = torch.bmm(x, y)
    return out if f.gemm is None else out.to(ACC)


def _sum_acc(f: Factor, t: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """t.sum(dims), accumulated and returned in float32 for a narrow factor."""
    return t.sum(dims) if f.gemm is None else t.sum(dims, dtype=ACC)


@register_layer_rule(torch.nn.Linear)
class LinearRule(LayerRule):
    """nn.Linear (and subclasses): weight 'outer', bias 'sum'."""

    kind = "outer"
    narrow = True  # A and B feed GEMMs: a bfloat16 model's factors stay bfloat16 (half the memory)

    def param_kinds(self, module: torch.nn.Module) -> Mapping[str, str]:
        """Weight and bias."""
        return {"weight": self.kind, "bias": BiasRule.kind}

    def capture(self, module: torch.nn.Module, pname: str, x: torch.Tensor, gy: torch.Tensor) -> Factor:
        """A = the layer's input, B = the gradient at its output."""
        return Factor(self.kind, x, gy, getattr(module, pname).shape)

    def dot(self, f: Factor, g: torch.Tensor) -> torch.Tensor:
        """sum((A G^T) * B) (narrow factors: the GEMM and product in their dtype, the sum in float32)."""
        return _sum_acc(f, (f.a @ g.T) * f.b, (1, 2))  # type: ignore[operator]

    def materialise(self, f: Factor, rows: slice) -> torch.Tensor:
        """B^T A per example (float32 for narrow factors)."""
        return _bmm_acc(f, f.b[rows].transpose(1, 2), f.a[rows])  # type: ignore[index]

    def total(self, f: Factor) -> torch.Tensor:
        """B^T A over all examples' slots at once (float32 for narrow factors: the self-check's sum)."""
        b, a = f.b.reshape(-1, f.b.shape[-1]), f.a.reshape(-1, f.a.shape[-1])  # type: ignore[union-attr]
        return b.T @ a if f.gemm is None else b.to(ACC).T @ a.to(ACC)

    def gram(self, f1: Factor, f2: Factor) -> torch.Tensor | None:
        """sum((A1 A2^T) * (B1 B2^T)) for two uses of this kind; other pairs have no form here."""
        if f1.kind != self.kind or f2.kind != self.kind:
            return None
        aa = _bmm_acc(f1, f1.a, f2.a.transpose(1, 2))  # type: ignore[union-attr]
        return (aa * _bmm_acc(f1, f1.b, f2.b.transpose(1, 2))).sum((1, 2))

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
        """sum((A G) * B) (narrow factors: the sum in float32)."""
        return _sum_acc(f, (f.a @ g) * f.b, (1, 2))  # type: ignore[operator]

    def materialise(self, f: Factor, rows: slice) -> torch.Tensor:
        """A^T B per example (float32 for narrow factors)."""
        return _bmm_acc(f, f.a[rows].transpose(1, 2), f.b[rows])  # type: ignore[index]

    def total(self, f: Factor) -> torch.Tensor:
        """A^T B over all examples' slots at once (float32 for narrow factors)."""
        a, b = f.a.reshape(-1, f.a.shape[-1]), f.b.reshape(-1, f.b.shape[-1])  # type: ignore[union-attr]
        return a.T @ b if f.gemm is None else a.to(ACC).T @ b.to(ACC)

    def dims(self, w: torch.Tensor) -> tuple[int, int]:
        """(in, out) of a [in, out] weight."""
        return int(w.shape[0]), int(w.shape[1])
