"""Low-level per-example maths (imported as `sample_effect.kernels`).

Each kernel takes plain tensors and callables and knows nothing about data files, targets or
CLIs; the engine (`sample_effect.engine.core`) decides which kernel runs. The reference kernel is
`per_sequence_grads`: `torch.func.functional_call` + `vmap(grad(loss))`, short enough to read
as the oracle every faster kernel is tested against. `per_sequence_directional` is the
forward-mode fast path for SGD effects toward a fixed direction. The ghost kernels
(`sample_effect.kernels.ghost`) take their per-layer maths from `LayerRule`s registered by
module type with `register_layer_rule` (`sample_effect.kernels.layers`).
"""

from .jvp import per_sequence_directional
from .layers import LayerRule, lookup_layer_rule, register_layer_rule
from .vmap import per_sequence_grads

__all__ = ["LayerRule", "lookup_layer_rule", "per_sequence_directional", "per_sequence_grads", "register_layer_rule"]
