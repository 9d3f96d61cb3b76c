"""Exact float64 for architectures that upcast to float32 inside a float64 model.

Qwen2 / Llama RMSNorm and transformers' eager attention compute in float32 even when the model is
float64, which leaves float32-level noise (~1e-7) in gradients. That noise matters: a fresh Adam
step is nearly sign(g), so near-zero gradient entries flip with it. `make_float64_exact` swaps in
float64-preserving RMSNorm forwards and a float64 eager attention, so a float64 model is float64
end to end and the engine can be checked against an oracle at 1e-6 relative error or better.
"""

from __future__ import annotations

import types
from typing import Any

import torch

ATTN_NAME = "eager_float64"


def _repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    if n_rep == 1:
        return x
    b, h, s, d = x.shape
    return x[:, :, None].expand(b, h, n_rep, s, d).reshape(b, h * n_rep, s, d)


def eager_attention_same_dtype(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers' eager attention with the softmax kept in the query's dtype."""
    n_rep = getattr(module, "num_key_value_groups", 1)
    k, v = _repeat_kv(key, n_rep), _repeat_kv(value, n_rep)
    weights = torch.matmul(query, k.transpose(2, 3)) * scaling
    if attention_mask is not None:
        weights = weights + attention_mask[..., : k.shape[-2]]
    weights = torch.softmax(weights, dim=-1)
    weights = torch.nn.functional.dropout(weights, p=dropout, training=module.training)
    out = torch.matmul(weights, v).transpose(1, 2).contiguous()
    return out, weights


def _register() -> None:
    """Make the float64 attention known to transformers (idempotent: registering again replaces the same entry)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask

    AttentionInterface.register(ATTN_NAME, eager_attention_same_dtype)
    ALL_MASK_ATTENTION_FUNCTIONS.register(ATTN_NAME, eager_mask)


def _rmsnorm_same_dtype(self: torch.nn.Module, hidden_states: torch.Tensor) -> torch.Tensor:
    if hidden_states.dtype != torch.float64:
        return self._sample_effect_original_forward(hidden_states)
    eps = getattr(self, "variance_epsilon", getattr(self, "eps", 1e-6))
    variance = hidden_states.pow(2).mean(-1, keepdim=True)
    return self.weight * (hidden_states * torch.rsqrt(variance + eps))


def make_float64_exact(model: torch.nn.Module) -> torch.nn.Module:
    """Patch a float64 model in place so no layer rounds through float32; a no-op for other dtypes."""
    if next(model.parameters()).dtype != torch.float64:
        return model
    for module in model.modules():
        if type(module).__name__.endswith("RMSNorm") and hasattr(module, "weight") and not hasattr(
            module, "_sample_effect_original_forward"
        ):
            module._sample_effect_original_forward = module.forward
            module.forward = types.MethodType(_rmsnorm_same_dtype, module)
    config = getattr(model, "config", None)
    if config is not None and getattr(config, "_attn_implementation", None) == "eager" and config.model_type != "gpt2":
        _register()
        model.set_attn_implementation(ATTN_NAME)
    return model
