"""Data contract: JSONL parsing, grouping by id, tokenisation and the response-only loss mask."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import write_jsonl

from sample_effect import SampleEffectError, load_examples
from sample_effect.data.examples import label_mask, pad_sequences, tokenize_examples


def test_tokens_are_prompt_then_response_then_eos(tokenizer, tmp_path):
    f = write_jsonl(tmp_path / "d.jsonl", [{"id": "a", "prompt": "Alice said,", "response": "Bob is a knave."}])
    (ex,), report = tokenize_examples(load_examples(f), tokenizer)
    p = tokenizer("Alice said,")["input_ids"]
    r = tokenizer("Bob is a knave.", add_special_tokens=False)["input_ids"]
    assert ex.sequences[0].tolist() == p + r + [tokenizer.eos_token_id]
    assert ex.response_starts == [len(p)]
    assert ex.n_tokens == len(r) + 1  # EOS carries loss
    assert report.n_truncated == 0


def test_eos_not_doubled_when_response_ends_with_it(tokenizer, tmp_path):
    eos = tokenizer.eos_token
    f = write_jsonl(tmp_path / "d.jsonl", [{"id": "a", "prompt": "Alice said,", "response": "Bob." + eos}])
    (ex,), _ = tokenize_examples(load_examples(f), tokenizer)
    ids = ex.sequences[0].tolist()
    assert ids[-1] == tokenizer.eos_token_id and ids[-2] != tokenizer.eos_token_id


def test_tokenizer_without_eos_or_pad(tmp_path):
    from sample_effect.models.tiny import train_tokenizer

    tok = train_tokenizer(["Alice is a knight."] * 3, vocab_size=270, eos=None)
    assert tok.pad_token is None and tok.eos_token_id is None
    f = write_jsonl(tmp_path / "d.jsonl", [{"id": "a", "prompt": "Alice", "response": " is a knight."}])
    (ex,), _ = tokenize_examples(load_examples(f), tok)
    assert ex.sequences[0].tolist() == tok("Alice")["input_ids"] + tok(" is a knight.", add_special_tokens=False)["input_ids"]


def test_same_id_lines_are_one_example(tmp_path, tokenizer):
    rows = [
        {"id": "a", "prompt": "P", "response": "one"},
        {"id": "b", "prompt": "Q", "response": "x"},
        {"id": "a", "prompt": "P", "response": "two"},
    ]
    exs = load_examples(write_jsonl(tmp_path / "d.jsonl", rows))
    assert [e.id for e in exs] == ["a", "b"]
    assert exs[0].responses == ["one", "two"] and exs[0].line_numbers == [1, 3]


def test_chat_messages_use_template_and_last_assistant_turn(tokenizer, tmp_path):
    msgs = [
        {"role": "user", "content": "Who is a knight?"},
        {"role": "assistant", "content": "Alice."},
        {"role": "user", "content": "Sure?"},
        {"role": "assistant", "content": "Yes, Alice is a knight."},
    ]
    f = write_jsonl(tmp_path / "d.jsonl", [{"id": "c", "messages": msgs}])
    (ex,), _ = tokenize_examples(load_examples(f), tokenizer)
    prompt = tokenizer.apply_chat_template(msgs[:3], add_generation_prompt=True, tokenize=False)
    full = tokenizer.apply_chat_template(msgs, tokenize=False)
    ids = ex.sequences[0].tolist()
    start = ex.response_starts[0]
    assert tokenizer.decode(ids[:start]) == prompt
    assert tokenizer.decode(ids[start:]).startswith(full[len(prompt):])
    assert ids[-1] == tokenizer.eos_token_id


def test_truncation_counts_and_masks(tokenizer, tmp_path):
    rows = [{"id": "a", "prompt": "Alice said, Bob", "response": "is a knight and Bob is a knave."}]
    f = write_jsonl(tmp_path / "d.jsonl", rows)
    n_prompt = len(tokenizer("Alice said, Bob")["input_ids"])
    (ex,), report = tokenize_examples(load_examples(f), tokenizer, max_length=n_prompt + 2)
    assert report.n_truncated == 1 and ex.sequences[0].shape[0] == n_prompt + 2
    assert ex.n_tokens == 2
    with pytest.raises(SampleEffectError, match="'a' has no response tokens left after truncation"):
        tokenize_examples(load_examples(f), tokenizer, max_length=n_prompt)


def test_label_mask_and_padding():
    ids = [torch.tensor([5, 6, 7, 8]), torch.tensor([1, 2])]
    batch, mask = pad_sequences(ids, [2, 1])
    assert batch.tolist() == [[5, 6, 7, 8], [1, 2, 0, 0]]
    assert mask.tolist() == [[False, True, True], [True, False, False]]
    assert label_mask(ids[0], 2).tolist() == [False, True, True]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"id": "a", "prompt": "p", "response": "r"}\n{"id": "b", "prompt": "p", "response": \n', r":2: malformed JSON"),
        ('{"id": "a", "prompt": "p"}\n', r":1: missing field 'response'"),
        ('{"prompt": "p", "response": "r"}\n', r":1: missing field 'id'"),
        ('{"id": "a", "prompt": 3, "response": "r"}\n', r":1: field 'prompt' must be a str"),
        ('{"id": "a", "prompt": "p", "response": ""}\n', r"empty response"),
        ('[1, 2]\n', r":1: expected a JSON object"),
        ('\n\n', r"no examples"),
        ('{"id": "a", "prompt": "p", "response": "r"}\n{"id": "a", "prompt": "q", "response": "r"}\n', r"different prompt"),
        ('{"id": "a", "messages": [{"role": "user", "content": "hi"}]}\n', r"no assistant turn"),
        ('{"id": "a", "messages": [{"role": "user"}]}\n', r"messages\[0\]"),
    ],
)
def test_bad_jsonl(tmp_path, content, message):
    f = tmp_path / "bad.jsonl"
    f.write_text(content, encoding="utf-8")
    with pytest.raises(SampleEffectError, match=message):
        load_examples(f)


def test_missing_binary_and_non_utf8(tmp_path):
    with pytest.raises(SampleEffectError, match="not found"):
        load_examples(tmp_path / "nope.jsonl")
    b = tmp_path / "b.jsonl"
    b.write_bytes(b"\x00\x01\x02")
    with pytest.raises(SampleEffectError, match="binary"):
        load_examples(b)
    u = tmp_path / "u.jsonl"
    u.write_bytes(json.dumps({"id": "a", "prompt": "p", "response": "r"}).encode() + b"\n\xff\xfe\n")
    with pytest.raises(SampleEffectError, match=r"u.jsonl:2: not valid UTF-8"):
        load_examples(u)
