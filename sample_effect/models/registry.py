"""Named models usable wherever a `--model` is: `tiny` and `tiny-small` (shipped) and `smollm2` (optional extra)."""

from __future__ import annotations

import os
from pathlib import Path

from sample_effect.errors import SampleEffectError
from sample_effect.hub import hub_id
from sample_effect.models.smollm2 import cache_dir, ensure_smollm2  # noqa: F401  (public here too: where converted checkpoints live)

ASSETS = Path(__file__).parent.parent / "assets"
TINY = ASSETS / "tiny-kk-v2"  # the default: 2.1M parameters, strong enough that a short SFT solves puzzles
TINY_V2 = TINY  # its earlier name, still accepted as --model tiny-v2
TINY_SMALL = ASSETS / "tiny-kk-small"  # the earlier 685K-parameter base, kept for fast tests
NAMED = {"tiny": TINY, "tiny-v2": TINY, "tiny-small": TINY_SMALL}


def resolve_model(spec: str | os.PathLike) -> Path | str:
    """Turn a --model value into a local directory ('tiny' (= 'tiny-v2'), 'tiny-small', 'smollm2', or a path),
    or, for a string like `org/name` that is not an existing local path, that Hugging Face Hub id as a string."""
    s = str(spec)
    if s in NAMED:
        if not (NAMED[s] / "config.json").exists():
            raise SampleEffectError(f"the {s} base model is missing from the package ({NAMED[s]}); run scripts/build_tiny_base.py")
        return NAMED[s]
    if s == "smollm2":
        return ensure_smollm2()
    repo = hub_id(s)
    return repo if repo is not None else Path(s)
