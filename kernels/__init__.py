"""Low-level per-example maths (imported as `sample_effect.kernels`).

Each kernel takes plain tensors and callables and knows nothing about data files, targets or
CLIs; the engine (`sample_effect.engine.core`) decides which kernel runs. The reference kernel is
`per_sequence_grads`: `torch.func.functional_call` + `vmap(grad(loss))`, short enough to read
as the oracle every faster kernel is tested against. `per_sequence_directional` is the
forward-mode fast path for SGD effects toward a fixed direction. The ghost kernels
(`sample_effect.kernels.ghost`) take their per-layer maths from `LayerRule`s registered by
module type with `register_layer_rule` (`sample_effect.kernels.layers`).
"""

from __future__ import annotations

if __name__ != "sample_effect.kernels":  # pragma: no cover - exercised in a subprocess by the tests
    # Only reachable as the top-level name `kernels`, when the repository root is on sys.path
    # (`python -m pytest`, `python -c ...` run from the root). That name belongs to the PyPI
    # package `kernels`, which transformers imports: hand the import over to it, so this folder
    # can never shadow it, and fail as a missing module when it is not installed.
    def _hand_over(name: str) -> None:
        import importlib.machinery
        import importlib.util
        import os
        import sys

        root = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
        path = [p for p in sys.path if os.path.realpath(p or os.curdir) != root]
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            raise ModuleNotFoundError(
                f"No module named {name!r} (the {name}/ folder of a sample-effect checkout is "
                f"importable only as sample_effect.{name})", name=name)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # the import statement returns what sys.modules holds
        try:
            spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(name, None)
            raise

    _hand_over(__name__)
else:
    from .jvp import per_sequence_directional
    from .layers import LayerRule, lookup_layer_rule, register_layer_rule
    from .vmap import per_sequence_grads

__all__ = ["LayerRule", "lookup_layer_rule", "per_sequence_directional", "per_sequence_grads", "register_layer_rule"]
