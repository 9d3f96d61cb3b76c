"""sample-effect: which fine-tuning examples will move a model, and how fast training will improve it.

The sample effect of an example s toward a target direction G is e(s) = <delta_theta(s), G> / lr,
the first-order change of the target per unit learning rate after one optimiser step on s.

The names below are imported on first use (PEP 562), so `import sample_effect` and the CLI's
`--help` do not pay for importing torch and transformers.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"


class _CheckoutKernels(importlib.abc.MetaPathFinder):
    """Finds `sample_effect.kernels` in the top-level `kernels/` folder of a source checkout.

    pyproject.toml maps that folder to `sample_effect.kernels` in a built wheel. When this package
    is imported straight from a checkout (the repository root on sys.path: `python -m pytest`, a
    regular install run from the root, another clone), the mapping is made here instead, so the
    checkout's own kernels load, never another install's.
    """

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if fullname != __name__ + ".kernels":
            return None
        return importlib.util.spec_from_file_location(
            fullname, os.path.join(self.folder, "__init__.py"), submodule_search_locations=[self.folder])


def _map_checkout_kernels() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    folder = os.path.join(os.path.dirname(here), "kernels")
    if os.path.isdir(os.path.join(here, "kernels")) or not os.path.isfile(os.path.join(folder, "__init__.py")):
        return  # an installed wheel (kernels inside the package), or not a checkout
    if not any(getattr(f, "folder", None) == folder for f in sys.meta_path):
        sys.meta_path.insert(0, _CheckoutKernels(folder))


_map_checkout_kernels()

# Public name -> the module that defines it. The workflow goes through `Analyzer`; everything else
# stays importable from its subpackage (docs/api.md) but is not advertised here.
_EXPORTS = {
    "AccuracyTarget": "sample_effect.targets.core",
    "Analyzer": "sample_effect.analyzer",
    "ComputeConfig": "sample_effect.engine.core",
    "DirectionTarget": "sample_effect.targets.core",
    "Effects": "sample_effect.scoring.result",
    "LossTarget": "sample_effect.targets.core",
    "RLGrowth": "sample_effect.growth.rl_results",
    "RLPredictConfig": "sample_effect.growth.rl_config",
    "RLPrediction": "sample_effect.growth.rl",
    "SFTConfig": "sample_effect.training.sft",
    "SFTCurve": "sample_effect.growth.sft",
    "SampleEffectError": "sample_effect.errors",
    "SelfTarget": "sample_effect.targets.core",
    "UpdateConfig": "sample_effect.update.optim",
    "load_examples": "sample_effect.data.examples",
    "load_model": "sample_effect.models.loading",
}

__all__ = [
    "AccuracyTarget",
    "Analyzer",
    "ComputeConfig",
    "DirectionTarget",
    "Effects",
    "LossTarget",
    "RLGrowth",
    "RLPredictConfig",
    "RLPrediction",
    "SFTConfig",
    "SFTCurve",
    "SampleEffectError",
    "SelfTarget",
    "UpdateConfig",
    "load_examples",
    "load_model",
]

if TYPE_CHECKING:  # static analysers see the real imports
    from sample_effect.analyzer import Analyzer
    from sample_effect.data.examples import load_examples
    from sample_effect.engine.core import ComputeConfig
    from sample_effect.errors import SampleEffectError
    from sample_effect.growth.rl import RLPrediction
    from sample_effect.growth.rl_config import RLPredictConfig
    from sample_effect.growth.rl_results import RLGrowth
    from sample_effect.growth.sft import SFTCurve
    from sample_effect.models.loading import load_model
    from sample_effect.scoring.result import Effects
    from sample_effect.targets.core import AccuracyTarget, DirectionTarget, LossTarget, SelfTarget
    from sample_effect.training.sft import SFTConfig
    from sample_effect.update.optim import UpdateConfig


def __getattr__(name: str) -> Any:
    """Import a re-exported name from its module on first access, then cache it here."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'sample_effect' has no attribute '{name}'")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """Module attributes plus the lazily imported public names."""
    return sorted(set(globals()) | set(__all__))
