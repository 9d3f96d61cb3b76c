"""Named models usable wherever a `--model` is: `tiny` (shipped) and `smollm2` (optional extra)."""

from __future__ import annotations

import os
from pathlib import Path

from sample_effect.errors import SampleEffectError
from sample_effect.models.smollm2 import cache_dir, ensure_smollm2  # noqa: F401  (public here too: where converted checkpoints live)

ASSETS = Path(__file__).parent.parent / "assets"
TINY = ASSETS / "tiny-kk"
TINY_V2 = ASSETS / "tiny-kk-v2"  # the stronger candidate (scripts/build_tiny_base.py, two stages); not yet the default


def resolve_model(spec: str | os.PathLike) -> Path:
    """Turn a --model value into a local directory: 'tiny', 'tiny-v2', 'smollm2', or a path."""
    s = str(spec)
    if s == "tiny":
        if not (TINY / "config.json").exists():
            raise SampleEffectError(f"the tiny base model is missing from the package ({TINY}); run scripts/build_tiny_base.py")
        return TINY
    if s == "tiny-v2":
        if not (TINY_V2 / "config.json").exists():
            raise SampleEffectError(f"the tiny-v2 model is missing from the package ({TINY_V2}); run scripts/build_tiny_base.py")
        return TINY_V2
    if s == "smollm2":
        return ensure_smollm2()
    return Path(s)
