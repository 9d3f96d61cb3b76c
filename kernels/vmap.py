"""Reference per-example gradients: `functional_call` + `vmap(grad(loss))`."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch.func import functional_call, grad, vmap

LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def per_sequence_grads(
    model: torch.nn.Module,
    params: Mapping[str, torch.Tensor],
    constants: Mapping[str, torch.Tensor],
    input_ids: torch.Tensor,
    label_mask: torch.Tensor,
    loss_fn: LossFn,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Gradient of `loss_fn` w.r.t. `params` for every row of `input_ids`, and the row losses.

    input_ids: [S, T]; label_mask: [S, T-1]; loss_fn(logits [1, T, V], ids [1, T], mask [1, T-1])
    returns a [1] loss. `constants` are the model's other parameters and buffers (detached). Each
    row is run through the model as a batch of one, so the result is that row's own gradient.
    """

    def row_loss(p: Mapping[str, torch.Tensor], ids: torch.Tensor, mask: torch.Tensor):
        out = functional_call(model, {**constants, **p}, args=(), kwargs={"input_ids": ids[None], "use_cache": False})
        loss = loss_fn(out.logits, ids[None], mask[None])[0]
        return loss, loss

    grads, losses = vmap(grad(row_loss, has_aux=True), in_dims=(None, 0, 0))(dict(params), input_ids, label_mask)
    return grads, losses
