"""Input formats for SFT data: JSONL, Parquet, and `datasets` datasets saved with `save_to_disk`.

Every command's data flags (`--data`, `--target-data`, `--eval-data`, ...) go through
`sample_effect.data.examples.load_examples`, which calls `read_records` here. Field names are mapped with
`FieldNames` (`--id-field`, `--prompt-field`, `--response-field`, `--messages-field`); a
Parquet file or saved dataset without the id column gets ids from row numbers (0-based, as
strings), so each row is its own example. In tabular sources a null cell counts as a missing
field (a file mixing chat rows and prompt/response rows holds nulls in the other columns).

`data_format_options` is a context manager the CLI wraps every command in: inside it,
`load_examples(path)` uses the command line's format flags unless the caller passes its own.
"""

from __future__ import annotations

import argparse
import contextlib
import contextvars
import os
from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from sample_effect.errors import SampleEffectError

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


_current: contextvars.ContextVar[DataFormat | None] = contextvars.ContextVar("sample_effect_data_format", default=None)


def current_format() -> DataFormat:
    """The format set by the enclosing `data_format_options` block (the CLI's flags), else the defaults."""
    return _current.get() or DataFormat()


@contextlib.contextmanager
def data_format_options(fmt: DataFormat) -> Iterator[DataFormat]:
    """Make `fmt` the default of every `load_examples` call inside the block."""
    token = _current.set(fmt)
    try:
        yield fmt
    finally:
        _current.reset(token)


def kind_of(path: str | os.PathLike) -> str:
    """'dataset' (a directory saved by `datasets`), 'parquet' or 'jsonl' (anything else)."""
    p = Path(path)
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
    from sample_effect.data.examples import read_jsonl

    p = Path(path)
    kind = kind_of(p)
    if split is not None and kind != "dataset" and not strict:
        split = None
    if split is not None and kind != "dataset":
        raise SampleEffectError(f"--split {split} applies to a `datasets` directory saved with save_to_disk, not to {p}")
    if kind == "jsonl":
        if p.is_dir():
            raise SampleEffectError(
                f"data path is a directory, expected a JSONL or Parquet file or a dataset saved with "
                f"`datasets` save_to_disk (no {', '.join(DATASET_MARKERS)} found): {p}"
            )
        return read_jsonl(p), False
    rows = _read_parquet(p) if kind == "parquet" else _read_dataset(p, split, strict)
    if not rows:
        raise SampleEffectError(f"{p}: no examples (the {'file' if kind == 'parquet' else 'dataset'} has no rows)")
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


def _read_dataset(p: Path, split: str | None, strict: bool = True) -> list[dict[str, Any]]:
    try:
        import datasets
    except ImportError:
        raise SampleEffectError(f"{p} is a saved `datasets` dataset; reading it needs: pip install 'sample-effect[hf]'") from None
    try:
        ds = datasets.load_from_disk(str(p))
    except Exception as exc:
        raise SampleEffectError(f"{p}: could not load the saved dataset ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    if isinstance(ds, datasets.DatasetDict):
        names = list(ds.keys())
        if split is None:
            if len(names) != 1:
                raise SampleEffectError(f"{p} is a DatasetDict with splits {', '.join(names)}; choose one with --split")
            split = names[0]
        if split not in ds:
            raise SampleEffectError(f"{p} has no split '{split}' (it has {', '.join(names)})")
        ds = ds[split]
    elif split is not None and strict:
        raise SampleEffectError(f"--split {split}: {p} is a single Dataset, not a DatasetDict with splits")
    return list(ds.to_list())


def map_fields(records: list[tuple[int, dict[str, Any]]], names: FieldNames, rows: bool) -> list[tuple[int, dict[str, Any]]]:
    """Give row-number ids to a tabular source without an id column (the whole column absent)."""
    if rows and not any(names.id in obj for _, obj in records):
        return [(i, {**obj, names.id: str(i)}) for i, obj in records]
    return records


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def add_data_format_args(p: argparse.ArgumentParser) -> None:
    """The format flags of every command that reads SFT data (`--data` and friends)."""
    g = p.add_argument_group("data format (every SFT data flag of this command)")
    g.add_argument("--split", default=None, metavar="NAME", help="split of a DatasetDict saved with save_to_disk")
    g.add_argument("--id-field", default="id", metavar="NAME", help="column holding the example id (default id; "
                   "a Parquet file or dataset without it gets ids from 0-based row numbers)")
    g.add_argument("--prompt-field", default="prompt", metavar="NAME", help="column holding the prompt (default prompt)")
    g.add_argument("--response-field", default="response", metavar="NAME", help="column holding the response (default response)")
    g.add_argument("--messages-field", default="messages", metavar="NAME", help="column holding chat messages (default messages)")


def add_data_format_args_everywhere(parser: argparse.ArgumentParser) -> None:
    """Add the format flags to every (sub)parser that has a --data option."""
    seen: set[int] = set()

    def visit(p: argparse.ArgumentParser) -> None:
        if id(p) in seen:
            return
        seen.add(id(p))
        has_data = any("--data" in a.option_strings for a in p._actions)
        has_split = any("--split" in a.option_strings for a in p._actions)
        if has_data and not has_split:
            add_data_format_args(p)
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction):
                for child in a.choices.values():
                    visit(child)

    visit(parser)


def format_from_args(args: argparse.Namespace) -> DataFormat:
    """The DataFormat the command line asks for (defaults where a command has no such flags)."""
    defaults = FieldNames()
    names = FieldNames(**{f.name: getattr(args, f"{f.name}_field", None) or getattr(defaults, f.name) for f in fields(FieldNames)})
    if len(set(vars(names).values())) != 4:
        raise SampleEffectError("--id-field, --prompt-field, --response-field and --messages-field must be different columns")
    split = getattr(args, "split", None)
    return DataFormat(fields=names, split=split if isinstance(split, str) else None)
