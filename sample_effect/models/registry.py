"""Named models usable wherever a `--model` is: `tiny` (shipped) and `smollm2` (optional extra)."""

from __future__ import annotations

import os
from pathlib import Path

from sample_effect.errors import SampleEffectError

ASSETS = Path(__file__).parent.parent / "assets"
TINY = ASSETS / "tiny-kk"


def cache_dir() -> Path:
    """Where converted checkpoints live: $SAMPLE_EFFECT_CACHE or ~/.cache/sample-effect."""
    return Path(os.environ.get("SAMPLE_EFFECT_CACHE", Path.home() / ".cache" / "sample-effect"))


def resolve_model(spec: str | os.PathLike) -> Path:
    """Turn a --model value into a local directory: 'tiny', 'smollm2', or a path."""
    s = str(spec)
    if s == "tiny":
        if not (TINY / "config.json").exists():
            raise SampleEffectError(f"the tiny base model is missing from the package ({TINY}); run scripts/build_tiny_base.py")
        return TINY
    if s == "smollm2":
        from sample_effect.models.smollm2 import ensure_smollm2

        return ensure_smollm2()
    return Path(s)
