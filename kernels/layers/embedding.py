"""Embedding weights: A is the one-hot of the looked-up ids, so every contraction becomes a gather.

g[v] = sum over the slots whose id is v of B. A weight tied to an output Linear (lm_head) has one
factor per use; the cross term of the two in the squared norm has a Gram form too (see `gram`).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from .base import Factor, LayerRule, register_layer_rule
from .linear import LinearRule


@register_layer_rule(torch.nn.Embedding)
class EmbeddingRule(LayerRule):
    """nn.Embedding (and subclasses) looked up densely: weight 'embed' (a: ids [E, N])."""

    kind = "embed"

    def param_kinds(self, module: torch.nn.Module) -> Mapping[str, str]:
        """The weight, unless max_norm / scale_grad_by_freq / sparse change its gradient."""
        if module.max_norm is None and not module.scale_grad_by_freq and not module.sparse:
            return {"weight": self.kind}
        return {}

    def capture(self, module: torch.nn.Module, pname: str, x: torch.Tensor, gy: torch.Tensor) -> Factor:
        """A = the ids (broadcast to the output's slots), B = the output gradient, zero at padding_idx."""
        ids = x.expand(gy.shape[:-1]) if x.shape != gy.shape[:-1] else x
        if module.padding_idx is not None:  # torch gives the padding row no gradient
            gy = gy * (ids != module.padding_idx).unsqueeze(-1).to(gy.dtype)
        return Factor(self.kind, ids, gy, getattr(module, pname).shape)

    def flatten(self, f: Factor, dtype: torch.dtype) -> tuple[torch.Tensor | None, torch.Tensor]:
        """The ids stay integer: a [S, N], b [S, N, d]."""
        return f.a.reshape(f.a.shape[0], -1), super().flatten(f, dtype)[1]  # type: ignore[union-attr]

    def dot(self, f: Factor, g: torch.Tensor) -> torch.Tensor:
        """sum_n G[id_n] . B_n."""
        return (g[f.a] * f.b).sum((1, 2))  # type: ignore[index]

    def materialise(self, f: Factor, rows: slice) -> torch.Tensor:
        """Scatter-add of B into the looked-up rows."""
        b = f.b[rows]
        out = b.new_zeros((b.shape[0], *f.shape))
        return out.scatter_add_(1, f.a[rows].unsqueeze(-1).expand(-1, -1, b.shape[-1]), b)  # type: ignore[index]

    def total(self, f: Factor) -> torch.Tensor:
        """index_add of every slot's B into its row."""
        b = f.b.reshape(-1, f.b.shape[-1])
        return b.new_zeros(f.shape).index_add_(0, f.a.reshape(-1), b)  # type: ignore[union-attr]

    def gram(self, f1: Factor, f2: Factor) -> torch.Tensor | None:
        """embed x embed: sum over slot pairs with equal ids of B1 . B2; embed x Linear (tied lm_head)."""
        if f1.kind == f2.kind == self.kind:
            same = (f1.a.unsqueeze(2) == f2.a.unsqueeze(1)).to(f1.b.dtype)  # type: ignore[union-attr]
            return (same * (f1.b @ f2.b.transpose(1, 2))).sum((1, 2))
        if f1.kind == LinearRule.kind and f2.kind == self.kind:
            f1, f2 = f2, f1
        if f1.kind == self.kind and f2.kind == LinearRule.kind:
            # tied lm_head: g_lin = B^T A [V, d]; <g_lin, g_emb> = sum_t sum_t' B[t', id_t] (A_t' . Be_t)
            # the Linear's factors may be narrow (a bfloat16 model's); this sum is taken in the embedding's dtype
            a2, b2 = f2.a.to(f1.b.dtype), f2.b.to(f1.b.dtype)  # type: ignore[union-attr]
            m = a2 @ f1.b.transpose(1, 2)  # [E, N', N]
            bg = torch.gather(b2, 2, f1.a.unsqueeze(1).expand(-1, b2.shape[1], -1))  # type: ignore[union-attr]
            return (m * bg).sum((1, 2))
        return None

    def gram_cost(self, f1: Factor, f2: Factor) -> float | None:
        """N1 N2 (d + 1) for two embedding uses, 2 N1 N2 k with the Linear (k: f1's last size, as given)."""
        kinds = {f1.kind, f2.kind}
        if kinds == {self.kind}:
            return f1.slots() * f2.slots() * (f1.b.shape[-1] + 1)
        if kinds == {self.kind, LinearRule.kind}:
            return 2 * f1.slots() * f2.slots() * f1.b.shape[-1]
        return None

    def meta_factor(self, module: torch.nn.Module, pname: str, rows: int, slots: int) -> Factor:
        """ids [rows, slots] (long), B [rows, slots, d] on the meta device."""
        shape = getattr(module, pname).shape
        ids = torch.empty(rows, slots, dtype=torch.long, device="meta")
        return Factor(self.kind, ids, torch.empty(rows, slots, shape[1], device="meta"), shape)
