"""Per-layer ghost rules, one class per layer family, registered by module type (see `base`).

Importing this package registers the built-in rules: Linear and transformers' Conv1D (`linear`),
Embedding (`embedding`), LayerNorm / RMSNorm-style weights (`norm`), biases (`bias`) and the dense
factors of the vmap fallback (`dense`). A new layer type is one `LayerRule` subclass decorated
with `@register_layer_rule(ItsModuleType)`.
"""

from . import bias, dense, embedding, linear, norm  # noqa: F401  (importing them registers the rules)
from .base import (
    Factor,
    LayerRule,
    UnknownKindError,
    lookup_layer_rule,
    register_layer_rule,
    rule_for_kind,
    unregister_layer_rule,
)

__all__ = [
    "Factor",
    "LayerRule",
    "UnknownKindError",
    "lookup_layer_rule",
    "register_layer_rule",
    "rule_for_kind",
    "unregister_layer_rule",
]
