"""File helpers: atomic writes (a file appears whole or not at all) and output-path checks."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from sample_effect.errors import ConfigError, SampleEffectError, literal

if TYPE_CHECKING:
    import pandas as pd


def check_output_path(path: str | os.PathLike, overwrite: bool = True) -> Path:
    """Fail early, before any compute, if `path` cannot be written."""
    p = Path(path)
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise SampleEffectError(f"output directory does not exist: {parent} (for {p})")
    if not os.access(parent, os.W_OK):
        raise SampleEffectError(f"output directory is not writable: {parent}")
    if p.is_dir():
        raise SampleEffectError(f"output path is a directory: {p}")
    if p.exists() and not overwrite:
        raise ConfigError("check_output_path", f"output file already exists: {literal(p)} (pass <overwrite> to replace it)")
    return p


def check_output_dir(path: str | os.PathLike, flag: str = "the output path") -> Path:
    """Fail early, before any compute, if `path` cannot be used as an output directory; creates nothing.

    The messages name the path `flag` (the CLI passes its option, e.g. "--out")."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise SampleEffectError(f"{flag} must be a directory, but {p} is a file")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise SampleEffectError(f"output directory's parent does not exist: {parent} (for {flag} {p})")
    where = p if p.is_dir() else parent
    if not os.access(where, os.W_OK | os.X_OK):
        raise SampleEffectError(f"output directory is not writable: {where} (for {flag} {p})")
    return p


@contextlib.contextmanager
def output_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Create the output directory for the block; if the block fails, remove it again when this call
    created it and nothing worth keeping (a `checkpoint-*` directory) was saved into it."""
    p = Path(path)
    created = not p.exists()
    p.mkdir(exist_ok=True)
    try:
        yield p
    except BaseException:
        if created and not any(p.glob("checkpoint-*")):
            shutil.rmtree(p, ignore_errors=True)
        raise


def current_umask() -> int:
    """The process's file-creation mask (read without changing it where the OS allows)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore (the only portable way to read it)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it onto `path` only if the block succeeds.

    The file gets the mode an ordinary `open(path, "w")` would give it (0o666 less the umask), not
    mkstemp's private 0o600, so outputs can be shared as the user's umask says.
    """
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent or ".")
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~current_umask())
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8"):
    """Open a temporary file for writing and move it onto `path` when the block succeeds."""
    if "b" in mode:
        encoding = None
    with atomic_path(path) as tmp, open(tmp, mode, encoding=encoding) as f:
        yield f


def write_table(df: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write a DataFrame as CSV or Parquet (by extension), atomically."""
    p = Path(path)
    with atomic_path(p) as tmp:
        if p.suffix.lower() == ".parquet":
            df.to_parquet(tmp, index=False)
        else:
            df.to_csv(tmp, index=False, float_format="%.10g")
