"""Shared fixtures: a tokenizer trained here and tiny float64 GPT-2 / Qwen2 / Llama models saved to disk."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sample_effect.models.tiny import build_tiny_model, save_model, train_tokenizer

CORPUS = [
    "A very special island is inhabited only by knights and knaves.",
    "Knights always tell the truth, and knaves always lie.",
    "Alice said, Bob is a knight and Carl is a knave.",
    "If Dana is a knight then Eve is a knave.",
    "So who is a knight and who is a knave?",
    "Alice is a knight, Bob is a knave, and Carl is a knight.",
    "Assume Bob is a knight. No contradiction is found in their claim.",
]

ARCHS = ["gpt2", "qwen2", "llama"]

# Train / target records in the JSONL contract; "t2" has two responses (one example).
TRAIN = [
    {"id": "t0", "prompt": "Alice said, Bob is a knight.", "response": "Alice is a knight, Bob is a knight."},
    {"id": "t1", "prompt": "If Dana is a knight then Eve is a knave.", "response": "Dana is a knave."},
    {"id": "t2", "prompt": "So who is a knight?", "response": "Carl is a knight."},
    {"id": "t2", "prompt": "So who is a knight?", "response": "Assume Carl is a knave. Carl is a knight."},
    {"id": "t3", "prompt": "Knights always tell the truth.", "response": "and knaves always lie, so Bob is a knave."},
    {"id": "t4", "prompt": "A very special island", "response": "is inhabited only by knights and knaves."},
]
TARGET = [
    {"id": "v0", "prompt": "Bob said, Alice is a knave.", "response": "Alice is a knight, Bob is a knave."},
    {"id": "v1", "prompt": "Eve said, Dana is a knight.", "response": "Dana is a knight, Eve is a knight."},
]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def tokenizer():
    return train_tokenizer(CORPUS * 5, vocab_size=320)


@pytest.fixture(scope="session")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("se")


@pytest.fixture(scope="session")
def data_files(workdir) -> dict[str, Path]:
    return {
        "train": write_jsonl(workdir / "train.jsonl", TRAIN),
        "target": write_jsonl(workdir / "target.jsonl", TARGET),
    }


@pytest.fixture(scope="session")
def model_dirs(workdir, tokenizer) -> dict[str, Path]:
    """Saved float64 tiny models, one per architecture."""
    out = {}
    for i, arch in enumerate(ARCHS):
        model = build_tiny_model(arch, tokenizer, torch.float64, seed=i)
        d = workdir / f"model-{arch}"
        save_model(model, tokenizer, d)
        out[arch] = d
    return out
