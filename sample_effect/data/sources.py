"""Input formats for SFT data: JSONL, Parquet, `datasets` datasets saved with `save_to_disk`, and Hugging Face
Hub datasets (`org/name`, not a local path: `datasets.load_dataset`, offline with HF_HUB_OFFLINE=1).

Every command's data flags (`--data`, `--target-data`, `--eval-data`, ...) go through
`sample_effect.data.examples.load_examples`, which calls `read_records` here. Field names are mapped with
`FieldNames` (`--id-field`, `--prompt-field`, `--response-field`, `--messages-field`); a
Parquet file or saved dataset without the id column gets ids from row numbers (0-based, as
strings), so each row is its own example. In tabular sources a null cell counts as a missing
field (a file mixing chat rows and prompt/response rows holds nulls in the other columns).

A command line's format flags become one `DataFormat`, passed explicitly to every
`load_examples(path, data_format=...)` call of that command (no hidden state: the library reads
what its caller passes and nothing else).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sample_effect.errors import ConfigError, SampleEffectError, literal
from sample_effect.hub import hub_failure, hub_id

DATASET_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")


@dataclass(frozen=True)
class FieldNames:
    """Which column holds each field of the SFT contract."""

    id: str = "id"
    prompt: str = "prompt"
    response: str = "response"
    messages: str = "messages"


@dataclass(frozen=True)
class DataFormat:
    """How to read a data path: field names, and the split of a saved DatasetDict."""

    fields: FieldNames = FieldNames()
    split: str | None = None


def kind_of(path: str | os.PathLike) -> str:
    """'dataset' (a directory saved by `datasets`), 'hub' (a Hugging Face Hub dataset id `org/name` that is not a
    local path), 'parquet' or 'jsonl' (anything else)."""
    p = Path(path)
    if hub_id(path) is not None:
        return "hub"
    if p.is_dir() and any((p / m).exists() for m in DATASET_MARKERS):
        return "dataset"
    if p.suffix.lower() == ".parquet":
        return "parquet"
    return "jsonl"


def read_records(
    path: str | os.PathLike, split: str | None = None, strict: bool = True
) -> tuple[list[tuple[int, dict[str, Any]]], bool]:
    """(number, record) pairs from any supported source, and whether the numbers are 0-based rows (else JSONL lines).

    With `strict` False (a command line's --split, shared by all its data flags), `split` is
    ignored for sources that have no splits instead of being an error.
    """
    p = Path(path)
    kind = kind_of(p)
    if split is not None and kind not in ("dataset", "hub") and not strict:
        split = None
    if split is not None and kind not in ("dataset", "hub"):
        raise ConfigError("read_records", f"<split> {literal(split)} applies to a `datasets` directory saved with save_to_disk, not to {literal(p)}")
    if kind == "jsonl":
        if p.is_dir():
            raise SampleEffectError(
                f"data path is a directory, expected a JSONL or Parquet file or a dataset saved with "
                f"`datasets` save_to_disk (no {', '.join(DATASET_MARKERS)} found): {p}"
            )
        return read_jsonl(p), False
    rows = _read_parquet(p) if kind == "parquet" else _read_hub(str(path), split) if kind == "hub" else _read_dataset(p, split, strict)
    if not rows:
        raise SampleEffectError(f"{path}: no examples (the {'file' if kind == 'parquet' else 'dataset'} has no rows)")
    # A null cell is an absent field: columnar formats cannot leave a cell out.
    return [(i, {k: v for k, v in row.items() if v is not None}) for i, row in enumerate(rows)], True


def _read_parquet(p: Path) -> list[dict[str, Any]]:
    if not p.exists():
        raise SampleEffectError(f"data file not found: {p}")
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise SampleEffectError("reading .parquet needs pyarrow: pip install 'sample-effect[parquet]'") from None
    try:
        table = pq.read_table(p)
    except Exception as exc:
        raise SampleEffectError(f"{p}: not a readable Parquet file ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    return table.to_pylist()


def _read_hub(repo: str, split: str | None) -> list[dict[str, Any]]:
    """Rows of a Hugging Face Hub dataset through `datasets.load_dataset(repo, split=split)` (offline with HF_HUB_OFFLINE=1)."""
    try:
        import datasets
    except ImportError:
        raise SampleEffectError(f"'{repo}' is not a local path; reading it as a Hugging Face Hub dataset needs: "
                                "pip install 'sample-effect[hf]'") from None
    try:
        ds = datasets.load_dataset(repo, split=split)
    except Exception as exc:  # datasets raises many types (not found, offline, bad split)
        raise SampleEffectError(hub_failure(repo, "a dataset", exc)) from None
    return _one_split(ds, repo, split, datasets)


def _one_split(ds: Any, where: Any, split: str | None, datasets: Any) -> Any:
    """The Dataset of a DatasetDict's `split` (its only split when None); a Dataset unchanged."""
    if not isinstance(ds, datasets.DatasetDict):
        return list(ds.to_list())
    names = list(ds.keys())
    if split is None:
        if len(names) != 1:
            raise ConfigError("read_records", f"{literal(where)} is a DatasetDict with splits {literal(', '.join(names))}; choose one with <split>")
        split = names[0]
    if split not in ds:
        raise SampleEffectError(f"{where} has no split '{split}' (it has {', '.join(names)})")
    return list(ds[split].to_list())


def _read_dataset(p: Path, split: str | None, strict: bool = True) -> list[dict[str, Any]]:
    try:
        import datasets
    except ImportError:
        raise SampleEffectError(f"{p} is a saved `datasets` dataset; reading it needs: pip install 'sample-effect[hf]'") from None
    try:
        ds = datasets.load_from_disk(str(p))
    except Exception as exc:
        raise SampleEffectError(f"{p}: could not load the saved dataset ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    if not isinstance(ds, datasets.DatasetDict) and split is not None and strict:
        raise ConfigError("read_records", f"<split> {literal(split)}: {literal(p)} is a single Dataset, not a DatasetDict with splits")
    return _one_split(ds, p, split, datasets)


def map_fields(records: list[tuple[int, dict[str, Any]]], names: FieldNames, rows: bool) -> list[tuple[int, dict[str, Any]]]:
    """Give row-number ids to a tabular source without an id column (the whole column absent)."""
    if rows and not any(names.id in obj for _, obj in records):
        return [(i, {**obj, names.id: str(i)}) for i, obj in records]
    return records


def _read_text(path: Path) -> str:
    if not path.exists():
        raise SampleEffectError(f"data file not found: {path}")
    if path.is_dir():
        raise SampleEffectError(f"data path is a directory, expected a JSONL file: {path}")
    raw = path.read_bytes()
    if b"\x00" in raw:
        raise SampleEffectError(f"{path}: looks like a binary file (NUL byte found), expected JSONL text")
    try:
        return raw.decode("utf-8-sig")  # a leading byte-order mark (Windows editors) is not data
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise SampleEffectError(f"{path}:{line}: not valid UTF-8 ({exc.reason})") from None


def read_jsonl(path: str | os.PathLike) -> list[tuple[int, dict[str, Any]]]:
    """Parse a JSONL file into (line number, object) pairs; blank lines are skipped.

    Lines end at "\n" only (a "\r" before it is dropped): str.splitlines() would also split at
    U+2028, U+0085 and other characters that JSON allows raw inside a string.
    """
    p = Path(path)
    text = _read_text(p)
    out: list[tuple[int, dict[str, Any]]] = []
    for lineno, line in enumerate(text.split("\n"), start=1):
        line = line.removesuffix("\r")
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SampleEffectError(f"{p}:{lineno}: malformed JSON ({exc.msg})") from None
        except RecursionError:
            raise SampleEffectError(f"{p}:{lineno}: malformed JSON (nested too deeply)") from None
        except ValueError as exc:  # e.g. an integer longer than Python's int-string conversion limit
            raise SampleEffectError(f"{p}:{lineno}: malformed JSON ({str(exc).split(':')[0]})") from None
        if not isinstance(obj, dict):
            raise SampleEffectError(f"{p}:{lineno}: expected a JSON object, got {type(obj).__name__}")
        if "\\u" in line:  # a \uD800-style escape can decode to a lone surrogate, which is not text
            try:
                json.dumps(obj, ensure_ascii=False).encode("utf-8")
            except UnicodeEncodeError:
                raise SampleEffectError(
                    f"{p}:{lineno}: a string holds a lone UTF-16 surrogate escape (e.g. \\ud800), which is not valid text"
                ) from None
        out.append((lineno, obj))
    if not out:
        raise SampleEffectError(f"{p}: no examples (the file is empty)")
    return out
