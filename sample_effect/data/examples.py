"""Training data: JSONL records -> examples -> token sequences with a response-only loss mask.

An *example* is everything that shares one `id`: one or several responses to one prompt. Its
direction in the engine is the mean of its responses' gradients (docs/theory.md, The sample effect).

Tokenisation follows what a trainer does: the prompt's tokens (with the tokenizer's usual
special tokens, e.g. BOS), then the response's tokens, then the EOS token if the tokenizer has
one and the response does not already end with it. Only response tokens (EOS included) carry
loss. Chat records (`messages`) are rendered with the tokenizer's chat template; the last
assistant turn is the response and everything before it the prompt.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from sample_effect.data.sources import DataFormat, FieldNames, read_jsonl  # noqa: F401  (read_jsonl: public here too)
from sample_effect.errors import ConfigError, SampleEffectError, literal
from sample_effect.io import atomic_open


@dataclass
class Example:
    """One training example: an id, its prompt and one or more responses (raw text)."""

    id: str
    responses: list[str]
    prompt: str | None = None
    messages: list[list[dict[str, Any]]] | None = None  # chat form: one message list per response
    records: list[dict[str, Any]] = field(default_factory=list)  # the input lines, for export
    line_numbers: list[int] = field(default_factory=list)
    source: str | None = None  # the file the lines came from, for error messages
    rows: bool = False  # line_numbers are 0-based rows of a Parquet file or dataset, not JSONL lines

    def where(self, i: int = 0) -> str:
        """'file:line: ' of the i-th response's line when known (prefix for error messages), else ''."""
        if self.source is None or i >= len(self.line_numbers):
            return ""
        if self.rows:
            return f"{self.source}: row {self.line_numbers[i]}: "
        return f"{self.source}:{self.line_numbers[i]}: "


@dataclass
class TokenizedExample:
    """Token ids of each response sequence and where its response starts."""

    id: str
    sequences: list[torch.Tensor]  # 1-D int64: prompt + response (+ EOS), possibly truncated
    response_starts: list[int]  # index of the first response token in each sequence
    weights: list[float] | None = None  # per-sequence loss weights for rollout objectives (GRPO, REINFORCE)

    @property
    def n_responses(self) -> int:
        """Number of response sequences (an example's direction is their mean gradient)."""
        return len(self.sequences)

    @property
    def n_tokens(self) -> int:
        """Number of response tokens that carry loss, summed over responses."""
        return sum(int(label_mask(s, r).sum()) for s, r in zip(self.sequences, self.response_starts))


def label_mask(ids: torch.Tensor, response_start: int) -> torch.Tensor:
    """Boolean mask over the T-1 next-token targets ids[1:]: True where the target is a response token."""
    positions = torch.arange(1, ids.shape[-1])
    return positions >= response_start


# --------------------------------------------------------------------------------------------
# Reading JSONL
# --------------------------------------------------------------------------------------------


def _field(obj: dict[str, Any], name: str, where: str, kind: type = str) -> Any:
    if name not in obj:
        raise SampleEffectError(f"{where}: missing field '{name}'")
    value = obj[name]
    if not isinstance(value, kind) or (kind is str and isinstance(value, bool)):
        want = {"str": "string"}.get(kind.__name__, kind.__name__)
        raise SampleEffectError(f"{where}: field '{name}' must be a {want}, got {_json_type(value)}")
    return value


def _json_type(value: Any) -> str:
    """The JSON name of a parsed value's type, for error messages."""
    names = {bool: "boolean", int: "number", float: "number", str: "string", list: "array", dict: "object"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _check_messages(messages: list[Any], where: str, name: str = "messages") -> int:
    """Validate a chat message list; return the index of the last assistant turn."""
    last = -1
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise SampleEffectError(f"{where}: {name}[{i}] must be an object with string 'role' and 'content'")
        if m["role"] == "assistant":
            last = i
    if last < 0:
        raise SampleEffectError(f"{where}: '{name}' has no assistant turn to use as the response")
    return last


def examples_from_records(
    records: Sequence[tuple[int, dict[str, Any]]], source: str = "<data>", fields: FieldNames | None = None,
    rows: bool = False,
) -> list[Example]:
    """Group validated records by `id` (first-seen order) into examples.

    `fields` maps the contract's names to the records' keys; `rows` says the numbers are 0-based
    rows of a table (error messages then read 'file: row 3') rather than JSONL line numbers.
    """
    f = fields or FieldNames()
    by_id: dict[str, Example] = {}
    for lineno, obj in records:
        where = f"{source}: row {lineno}" if rows else f"{source}:{lineno}"
        if f.id not in obj:
            raise SampleEffectError(f"{where}: missing field '{f.id}'")
        ex_id = obj[f.id]
        if isinstance(ex_id, bool) or not isinstance(ex_id, (str, int)):
            raise SampleEffectError(f"{where}: field '{f.id}' must be a string, got {_json_type(ex_id)}")
        ex_id = str(ex_id)
        if f.messages in obj:
            messages = _field(obj, f.messages, where, list)
            last = _check_messages(messages, where, f.messages)
            conv = messages[: last + 1]
            prompt, response = None, conv[-1]["content"]
        else:
            prompt = _field(obj, f.prompt, where)
            response = _field(obj, f.response, where)
            conv = None
        if response == "":
            raise SampleEffectError(f"{where}: example '{ex_id}' has an empty response")
        ex = by_id.get(ex_id)
        if ex is None:
            ex = by_id[ex_id] = Example(
                id=ex_id, responses=[], prompt=prompt, messages=[] if conv else None, source=source, rows=rows
            )
        elif (ex.messages is None) != (conv is None):
            raise SampleEffectError(f"{where}: id '{ex_id}' mixes chat 'messages' and 'prompt'/'response' lines")
        elif conv is None and ex.prompt != prompt:
            raise SampleEffectError(
                f"{where}: id '{ex_id}' appears again with a different prompt (first at {'row' if rows else 'line'} {ex.line_numbers[0]})"
            )
        elif conv is not None and ex.messages and conv[:-1] != ex.messages[0][:-1]:
            raise SampleEffectError(
                f"{where}: id '{ex_id}' appears again with a different conversation (first at {'row' if rows else 'line'} {ex.line_numbers[0]})"
            )
        ex.responses.append(response)
        if conv is not None:
            assert ex.messages is not None
            ex.messages.append(conv)
        ex.records.append(obj)
        ex.line_numbers.append(lineno)
    return list(by_id.values())


def load_examples(
    path: str | os.PathLike, *, split: str | None = None, id_field: str | None = None,
    prompt_field: str | None = None, response_field: str | None = None, messages_field: str | None = None,
    data_format: DataFormat | None = None,
) -> list[Example]:
    """Read SFT data (the formats of docs/guide.md, section 1) into examples, grouping records by id.

    `path` is a JSONL file, a Parquet file (.parquet), a directory saved by `datasets` or a Hugging
    Face Hub dataset id `org/name` that is not a local path (`split` picks a DatasetDict's split). The *_field options name the columns holding each
    field (defaults: id, prompt, response, messages, or `data_format`'s); a table with no
    id column gets ids from 0-based row numbers. `data_format` is a format shared by several
    paths (a command line's --split/--*-field flags): its split applies to `datasets` directories
    only, so one --split can serve a command's JSONL and dataset inputs alike. See
    `sample_effect.data.sources`.
    """
    from sample_effect.data.sources import map_fields, read_records

    fmt = data_format or DataFormat()
    given = {"id": id_field, "prompt": prompt_field, "response": response_field, "messages": messages_field}
    names = FieldNames(**{k: v if v is not None else getattr(fmt.fields, k) for k, v in given.items()})
    records, rows = read_records(path, split if split is not None else fmt.split, strict=split is not None)
    return examples_from_records(map_fields(records, names, rows), source=str(path), fields=names, rows=rows)


# --------------------------------------------------------------------------------------------
# Tokenisation
# --------------------------------------------------------------------------------------------


@dataclass
class TokenizeReport:
    """What tokenisation did that a user should hear about."""

    n_truncated: int = 0


def _ids(tokenizer: Any, text: str, special: bool) -> list[int]:
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])


def _chat_split(tokenizer: Any, conv: list[dict[str, Any]], ex_id: str, where: str = "") -> tuple[str, str]:
    if getattr(tokenizer, "chat_template", None) is None:
        raise SampleEffectError(
            f"{where}example '{ex_id}' uses 'messages' but the tokenizer has no chat template"
        )
    prompt = tokenizer.apply_chat_template(conv[:-1], add_generation_prompt=True, tokenize=False)
    full = tokenizer.apply_chat_template(conv, tokenize=False)
    if not full.startswith(prompt):
        raise SampleEffectError(
            f"{where}example '{ex_id}': the chat template renders the conversation without the prompt as a prefix, "
            "so the response cannot be separated from the prompt"
        )
    return prompt, full[len(prompt):]


def tokenize_example(
    ex: Example, tokenizer: Any, max_length: int | None = None, report: TokenizeReport | None = None
) -> TokenizedExample:
    """Turn one example into token sequences; raise if a response is left with no loss-carrying token."""
    eos = getattr(tokenizer, "eos_token_id", None)
    seqs: list[torch.Tensor] = []
    starts: list[int] = []
    for i, response in enumerate(ex.responses):
        if ex.messages is not None:
            prompt_text, response_text = _chat_split(tokenizer, ex.messages[i], ex.id, ex.where(i))
            prompt_ids = _ids(tokenizer, prompt_text, special=False)
            resp_ids = _ids(tokenizer, response_text, special=False)
            needs_eos = eos is not None and eos not in resp_ids
        else:
            assert ex.prompt is not None
            prompt_ids = _ids(tokenizer, ex.prompt, special=True)
            resp_ids = _ids(tokenizer, response, special=False)
            needs_eos = eos is not None and (not resp_ids or resp_ids[-1] != eos)
        if needs_eos:
            resp_ids = [*resp_ids, eos]
        ids = prompt_ids + resp_ids
        if max_length is not None and len(ids) > max_length:
            ids = ids[:max_length]
            if report is not None:
                report.n_truncated += 1
        # The first token of a sequence has no prediction, so a response starting at 0 loses it.
        start = max(len(prompt_ids), 1)
        if len(ids) <= start:
            empty = f"{ex.where(i)}example '{ex.id}' has no response tokens left"
            if max_length is not None and len(prompt_ids) + len(resp_ids) > max_length:
                raise ConfigError("tokenize_example", f"{literal(empty)} after truncation to <max_length> {max_length}")
            raise SampleEffectError(empty)
        seqs.append(torch.tensor(ids, dtype=torch.long))
        starts.append(start)
    return TokenizedExample(id=ex.id, sequences=seqs, response_starts=starts)


def tokenize_examples(
    examples: Sequence[Example], tokenizer: Any, max_length: int | None = None
) -> tuple[list[TokenizedExample], TokenizeReport]:
    """Tokenise every example; the report counts right-truncated sequences."""
    if not examples:
        raise SampleEffectError("the dataset is empty")
    if max_length is not None and max_length < 2:
        raise ConfigError("tokenize_examples", f"<max_length> must be at least 2, got {max_length}")
    report = TokenizeReport()
    return [tokenize_example(ex, tokenizer, max_length, report) for ex in examples], report


def pad_sequences(seqs: Sequence[torch.Tensor], starts: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad sequences to one length: (input_ids [B, T], label mask [B, T-1]).

    Right padding needs no attention mask for a causal LM: real tokens never attend to the pad
    tokens that follow them, so their logits are those of the unpadded sequence.
    """
    width = max(int(s.shape[0]) for s in seqs)
    ids = torch.zeros(len(seqs), width, dtype=torch.long)
    mask = torch.zeros(len(seqs), width - 1, dtype=torch.bool)
    for i, (s, r) in enumerate(zip(seqs, starts)):
        n = int(s.shape[0])
        ids[i, :n] = s
        mask[i, : n - 1] = label_mask(s, r)
    return ids, mask


def export_examples(examples: Sequence[Example], path: str | os.PathLike) -> None:
    """Write examples back in their input format (every line of each, in the given order), atomically."""
    with atomic_open(path) as f:
        for ex in examples:
            for rec in ex.records:
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
