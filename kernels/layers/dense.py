"""Dense per-example gradients [E, *shape]: the factor the vmap fallback hands back for parameters
of modules no rule covers (or whose factors failed the self-check), so every parameter has a rule."""

from __future__ import annotations

import torch

from .base import Factor, LayerRule, register_layer_rule


@register_layer_rule()  # by kind only: made by the engine from vmap gradients, never from hooks
class DenseRule(LayerRule):
    """kind 'dense': b is the per-example gradient itself, a is None."""

    kind = "dense"
    returns_view = True

    def param_kinds(self, module: torch.nn.Module) -> dict[str, str]:
        """Covers nothing: dense factors do not come from module hooks."""
        return {}

    def capture(self, module: torch.nn.Module, pname: str, x: torch.Tensor, gy: torch.Tensor) -> Factor:
        """Not captured by hooks: the engine builds dense factors from vmap gradients."""
        raise NotImplementedError("dense factors come from vmap gradients, not from module hooks")

    def flatten(self, f: Factor, dtype: torch.dtype) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Not regrouped: dense factors are built per example already."""
        raise NotImplementedError("dense factors are per example already; group_examples takes hooked factors")

    def dot(self, f: Factor, g: torch.Tensor) -> torch.Tensor:
        """One GEMV over the flattened gradients."""
        return f.b.flatten(1) @ g.flatten()

    def materialise(self, f: Factor, rows: slice) -> torch.Tensor:
        """A view of the stored rows."""
        return f.b[rows]

    def total(self, f: Factor) -> torch.Tensor:
        """Sum over examples."""
        return f.b.sum(0)

    def materialise_cost(self, f: Factor) -> float:
        """Nothing to form."""
        return 0.0

    def slots(self, f: Factor) -> int:
        """No token slots."""
        return 0

    def meta_factor(self, module: torch.nn.Module, pname: str, rows: int, slots: int) -> Factor:
        """Not planned as a factor: the planner lists vmap parameters separately."""
        raise NotImplementedError("the planner lists vmap parameters separately")
