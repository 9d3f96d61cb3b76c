"""Hugging Face Hub helpers: when a model or data argument is a Hub id (`org/name`), the error when one
cannot be loaded, and quiet transformers progress bars.

A Hub id goes to transformers' `from_pretrained` or `datasets.load_dataset`, which honour
HF_HUB_OFFLINE=1 (read the local cache, $HF_HOME/hub, only) and HF_HOME / HF_HUB_CACHE.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

# A Hugging Face Hub repository id: `org/name` (letters, digits, '-', '_', '.').
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}")
# A missing path with one of these suffixes is a mistyped local file, never a Hub id.
LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv", ".txt", ".arrow", ".safetensors", ".bin", ".pt")


def hub_id(spec: str | os.PathLike) -> str | None:
    """`spec` as a Hub id when it is not an existing local path and looks like `org/name`, else None.

    A missing path with a file suffix (`runs/train.jsonl`) or more than one `/` stays a path, so a
    typo in a local path is reported as a missing file rather than as a Hub lookup."""
    s = str(spec)
    if not _HUB_ID.fullmatch(s) or ".." in s or s.endswith(".") or Path(s).exists():
        return None
    if Path(s).suffix.lower() in LOCAL_SUFFIXES:
        return None
    return s


def hub_offline() -> bool:
    """Whether HF_HUB_OFFLINE asks for the local cache only."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def hub_failure(repo: str, what: str, exc: BaseException) -> str:
    """The message for a Hub id that could not be loaded: not a local path, and what the Hub (or the offline cache) said."""
    where = ("HF_HUB_OFFLINE is set, so only the local Hugging Face cache was searched, and it is not there"
             if hub_offline() else "not found on the Hugging Face Hub or in the local cache")
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return f"'{repo}' is not a local path, and {what} with this Hugging Face Hub id could not be loaded ({where}): {first}"


def quiet_hf_progress() -> None:
    """Silence transformers' per-load progress bars (ours are enough)."""
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except Exception:  # pragma: no cover
        pass
