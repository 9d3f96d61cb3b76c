"""Per-example directional derivatives <g_i, v> without per-example gradients: one forward-mode pass.

For a fixed direction v (the target G), the vector of per-example losses l(theta) has Jacobian-
vector product J v whose i-th entry is <grad l_i, v>. `torch.func.jvp` computes it in a single
batched forward pass carrying tangents, so memory stays near that of a forward pass and no
[batch, n_params] tensor ever exists. This is the whole SGD effect when there is no clipping.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch.func import functional_call, jvp

LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def per_sequence_directional(
    model: torch.nn.Module,
    params: Mapping[str, torch.Tensor],
    constants: Mapping[str, torch.Tensor],
    input_ids: torch.Tensor,
    label_mask: torch.Tensor,
    loss_fn: LossFn,
    direction: Mapping[str, torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:
    """(losses [S], <grad loss_s, direction> [S]) for a right-padded batch of S sequences.

    `loss_fn(logits [S, T, V], ids [S, T], mask [S, T-1]) -> [S]`; `direction` must have the
    params' dtypes. Right padding keeps each row's loss exactly that of the unpadded sequence.
    """
    names = list(params)

    def losses(*tensors: torch.Tensor) -> torch.Tensor:
        p = dict(zip(names, tensors))
        logits = functional_call(model, {**constants, **p}, args=(), kwargs={"input_ids": input_ids, "use_cache": False}).logits
        return loss_fn(logits, input_ids, label_mask)

    primals = tuple(params[n].detach() for n in names)
    tangents = tuple(direction[n].to(dtype=params[n].dtype, device=params[n].device) for n in names)
    value, dots = jvp(losses, primals, tangents)
    return value.detach(), dots.detach()
