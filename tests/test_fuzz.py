"""Fuzzing the data readers: whatever bytes a JSONL file holds, reading it either works or raises
SampleEffectError (a one-line message for the CLI), never another exception."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from sample_effect.data.examples import (
    export_examples,
    load_examples,
    read_jsonl,
    tokenize_examples,
)
from sample_effect.errors import SampleEffectError
from sample_effect.rollouts.prompts import load_rl_prompts

FIELDS = ["id", "prompt", "response", "messages", "role", "content", "answer"]
# Characters that trip line splitting, decoding or JSON: separators str.splitlines() knows, BOM, controls.
SPECIAL = ["\n", "\r", "\u2028", "\u2029", "\x85", "\x1c", "\x1e", "\x0b", "\x0c", "\ufeff", "\x00", '"', "\\", "{", "]"]

text = st.text(st.one_of(st.characters(), st.sampled_from(SPECIAL)), max_size=12)
lone_surrogate = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF).map(lambda c: f"x{c}y")


def json_values(scalars: st.SearchStrategy[Any], keys: st.SearchStrategy[str]) -> st.SearchStrategy[Any]:
    return st.recursive(
        scalars,
        lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.one_of(st.sampled_from(FIELDS), keys), inner, max_size=4)),
        max_leaves=12,
    )


values = json_values(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), text, lone_surrogate, st.just("")), text)
# Values that survive a JSON round trip unchanged (no NaN, no lone surrogates).
plain_text = st.text(st.one_of(st.characters(exclude_categories=["Cs"]), st.sampled_from(SPECIAL)), max_size=12)
plain_values = json_values(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), plain_text), plain_text)
message = st.fixed_dictionaries({"role": st.one_of(st.sampled_from(["user", "assistant", "system"]), values), "content": values})
# Objects shaped like records, with every field possibly missing or of the wrong type.
records = st.one_of(
    st.dictionaries(st.sampled_from(FIELDS), values, max_size=5),
    st.fixed_dictionaries(
        {"id": st.one_of(st.sampled_from(["a", "b", 1]), values), "prompt": st.one_of(text, values), "response": st.one_of(text, values)},
        optional={"answer": values},
    ),
    st.fixed_dictionaries({"id": st.sampled_from(["a", "b"]), "messages": st.one_of(st.lists(message, max_size=3), values)}),
)


@st.composite
def jsonl_bytes(draw: st.DrawFn) -> bytes:
    """A file's bytes: JSON lines (ASCII-escaped or raw), truncated lines, non-objects, deep nesting, junk bytes."""
    lines: list[bytes] = []
    for _ in range(draw(st.integers(0, 5))):
        kind = draw(st.sampled_from(["record", "record", "record", "value", "truncated", "bytes", "nested", "blank"]))
        if kind == "record" or kind == "truncated":
            raw = json.dumps(draw(records), ensure_ascii=draw(st.booleans()))
            if kind == "truncated":
                raw = raw[: draw(st.integers(0, max(0, len(raw) - 1)))]
            lines.append(raw.encode("utf-8", "surrogatepass"))
        elif kind == "value":
            lines.append(json.dumps(draw(values)).encode())
        elif kind == "nested":
            depth = draw(st.sampled_from([1, 50, 5000, 200_000]))
            lines.append(b'{"id": "a", "x": ' + b"[" * depth + b"]" * depth + b"}")
        elif kind == "bytes":
            lines.append(draw(st.binary(max_size=40)))
        else:
            lines.append(draw(st.sampled_from([b"", b"  ", b"\t"])))
    body = draw(st.sampled_from([b"\n", b"\r\n"])).join(lines) + draw(st.sampled_from([b"", b"\n"]))
    return draw(st.sampled_from([b"", b"\xef\xbb\xbf"])) + body


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(content=jsonl_bytes(), max_length=st.one_of(st.none(), st.integers(1, 40)))
@example(content=b'{"id": "a", "prompt": "p\xe2\x80\xa8q", "response": "r\xc2\x85s"}\n', max_length=None)
@example(content=b'{"id": "a", "prompt": "p", "response": "\\udc00"}\n', max_length=None)
@example(content=b'{"id": 1' + b"0" * 5000 + b', "prompt": "p", "response": "r"}', max_length=None)
@example(content=b'{"id": "a", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", max_length=None)
def test_reading_any_file_works_or_raises_sample_effect_error(content: bytes, max_length: int | None, fuzz_dir: Path, tokenizer) -> None:
    f = fuzz_dir / "data.jsonl"
    f.write_bytes(content)
    try:
        rows = read_jsonl(f)
    except SampleEffectError as exc:
        assert str(exc).startswith(str(f)) and "\n" not in str(exc)
        return
    assert rows and all(isinstance(obj, dict) and n >= 1 for n, obj in rows)
    for loader in (load_examples, load_rl_prompts):
        try:
            loaded = loader(f)
        except SampleEffectError as exc:
            assert str(exc).startswith(str(f)), exc
            continue
        assert loaded
        if loader is load_examples:
            assert all(isinstance(ex.id, str) and ex.responses and all(ex.responses) for ex in loaded)
            try:
                tokenized, _ = tokenize_examples(loaded, tokenizer, max_length)
            except SampleEffectError:
                continue
            assert all(s.numel() > r for t in tokenized for s, r in zip(t.sequences, t.response_starts))


def _sft_text() -> st.SearchStrategy[str]:
    """Any text a JSON file can hold (no lone surrogates), rich in line separators."""
    return st.text(st.one_of(st.characters(exclude_categories=["Cs"]), st.sampled_from(SPECIAL)), min_size=1, max_size=20)


@settings(max_examples=100, deadline=None)
@given(rows=st.lists(
    st.tuples(_sft_text(), _sft_text(), st.dictionaries(st.sampled_from(["answer", "meta"]), plain_values, max_size=2)),
    min_size=1, max_size=4,
))
def test_any_valid_records_round_trip_through_export(rows: list[tuple[str, str, dict[str, Any]]], fuzz_dir: Path) -> None:
    """Valid records whose text holds line separators (U+2028, U+0085, ...) load back unchanged, also
    after `export_examples`, which writes them raw (ensure_ascii=False)."""
    recs = [{"id": f"r{i}", "prompt": p, "response": r, **extra} for i, (p, r, extra) in enumerate(rows)]
    f = fuzz_dir / "valid.jsonl"
    f.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs), encoding="utf-8")
    exs = load_examples(f)
    assert [(e.id, e.prompt, e.responses) for e in exs] == [(r["id"], r["prompt"], [r["response"]]) for r in recs]
    out = fuzz_dir / "exported.jsonl"
    export_examples(exs, out)
    assert [e.records for e in load_examples(out)] == [[r] for r in recs]
