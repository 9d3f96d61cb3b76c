"""A catalogue of bad inputs, command by command (issue 7, reliability).

Every case runs the CLI in-process and checks the error contract: exit code 2, exactly one line on
stderr, `sample-effect: error: ...`, naming the problem and where it is (file:line for data lines,
the field, the flag), no traceback, and no output left behind.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import uuid
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import CORPUS, TARGET, TRAIN, write_jsonl

from sample_effect.cli.main import main
from sample_effect.errors import SampleEffectError

ROOT = hasattr(os, "geteuid") and os.geteuid() == 0

VALID = {"id": "a", "prompt": "Alice said, Bob is a knight.", "response": "Alice is a knight.", "answer": "x"}
CHAT = {"id": "c", "messages": [{"role": "user", "content": "Who?"}, {"role": "assistant", "content": "Alice."}]}
RL = [{"id": "p0", "prompt": "Alice said,", "answer": "x"}, {"id": "p1", "prompt": "Bob said,", "answer": "y"}]


def line(obj: object) -> bytes:
    return (json.dumps(obj) + "\n").encode()


class _Records(logging.Handler):
    """Log records of WARNING and above, as the CLI would print them."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"sample-effect: {record.levelname}: {record.getMessage()}\n")


def run(argv: Sequence[object], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Exit code, stdout and stderr of the CLI. Under pytest, Python warnings and log records do not reach
    stderr (pytest captures them), so they are added to it here as the CLI would show them."""
    records = _Records()
    logging.getLogger().addHandler(records)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            code = main([str(a) for a in argv])
    finally:
        logging.getLogger().removeHandler(records)
    cap = capsys.readouterr()
    shown = "".join(f"{w.filename}:{w.lineno}: {w.category.__name__}: {w.message}\n" for w in caught)
    return code, cap.out, shown + "".join(records.lines) + cap.err


def assert_error(
    argv: Sequence[object], capsys: pytest.CaptureFixture[str], *needles: str, outputs: Sequence[Path] = ()
) -> str:
    """Run argv; check exit 2, one `sample-effect: error:` line holding every needle, no traceback, no outputs."""
    assert not any(o.exists() for o in outputs), "an output exists before the run"
    code, out, err = run(argv, capsys)
    lines = [x for x in err.splitlines() if x.strip()]
    assert code == 2, (code, err)
    assert "Traceback" not in out + err
    assert len(lines) == 1, err
    assert lines[0].startswith("sample-effect: error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    left = [str(o) for o in outputs if o.exists()]
    assert not left, f"left behind: {left}"
    return lines[0]


# --------------------------------------------------------------------------------------------
# Fixtures: one tiny GPT-2, broken copies of it, and small data files
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gpt2(model_dirs: dict[str, Path]) -> Path:
    return model_dirs["gpt2"]


@pytest.fixture(scope="module")
def broken(gpt2: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Copies of the GPT-2 directory with one thing wrong, and a model whose tokenizer lacks EOS, pad and chat template."""
    from sample_effect.models.tiny import build_tiny_model, save_model, train_tokenizer

    root = tmp_path_factory.mktemp("broken-models")
    out: dict[str, Path] = {}

    def copy(name: str, skip: Sequence[str] = ()) -> Path:
        d = root / name
        shutil.copytree(gpt2, d, ignore=lambda _dir, names: [n for n in names if n.startswith(tuple(skip))])
        out[name] = d
        return d

    copy("no-weights", ["model.safetensors"])
    copy("no-tokenizer", ["tokenizer", "special_tokens_map", "chat_template"])
    (copy("corrupt-weights") / "model.safetensors").write_bytes(b"this is not a safetensors file" * 10)
    (copy("bad-config") / "config.json").write_text('{"model_type": "gpt2", "n_embd": ')
    tok = train_tokenizer(CORPUS * 5, vocab_size=320, eos=None, pad=None, chat_template=False)
    save_model(build_tiny_model("gpt2", tok, torch.float64), tok, root / "no-eos")
    out["no-eos"] = root / "no-eos"
    return out


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bad-input-data")
    return {
        "train": write_jsonl(d / "train.jsonl", [{**r, "answer": "x"} for r in TRAIN[:4]]),
        "target": write_jsonl(d / "target.jsonl", TARGET),
        "prompts": write_jsonl(d / "prompts.jsonl", RL),
        "chat": write_jsonl(d / "chat.jsonl", [CHAT]),
    }


@pytest.fixture
def reward_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh importable module of misbehaving rewards (a unique name, so no import cache is shared)."""
    name = f"se_bad_rewards_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(
        "def boom(prompt, completion, answer):\n    raise ValueError('kaboom')\n\n"
        "def nan(prompt, completion, answer, finished=True):\n    return float('nan')\n\n"
        "def text(prompt, completion, answer):\n    return 'yes'\n"
    )
    (tmp_path / f"{name}_broken.py").write_text("def reward(:\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def rank(model: Path, data: Path, out: Path, *extra: object) -> list[object]:
    return ["rank", "--model", model, "--data", data, "--target", "self", "--out", out, "--quiet", *extra]


GRPO_FAST = ["--steps", "1", "--prompts-per-step", "1", "--group-size", "2", "--max-new-tokens", "2", "--quiet"]


# --------------------------------------------------------------------------------------------
# Data files (run through `rank --data`; data are read before the model loads)
# --------------------------------------------------------------------------------------------

DIRECTORY = b"<a directory>"
ok = line(VALID)
DATA_CASES: list[tuple[str, bytes | None, tuple[str, ...]]] = [
    ("missing", None, ("data file not found: {f}",)),
    ("directory", DIRECTORY, ("data path is a directory", "{f}")),
    ("empty", b"", ("{f}: no examples",)),
    ("blank-lines-only", b"\n  \n\t\r\n", ("{f}: no examples",)),
    ("binary", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00", ("{f}: looks like a binary file",)),
    ("not-utf8", ok + b'{"id": "b", "prompt": "caf\xe9", "response": "r"}\n', ("{f}:2: not valid UTF-8",)),
    ("malformed-json", ok + b"this is not json\n", ("{f}:2: malformed JSON",)),
    ("truncated-json", ok + ok[:25], ("{f}:2: malformed JSON",)),
    ("not-an-object", ok + b'["a", "p", "r"]\n', ("{f}:2: expected a JSON object, got list",)),
    ("missing-id", ok + line({"prompt": "p", "response": "r"}), ("{f}:2: missing field 'id'",)),
    ("missing-response", line({"id": "a", "prompt": "p"}), ("{f}:1: missing field 'response'",)),
    ("prompt-not-string", ok + line({"id": "b", "prompt": 3, "response": "r"}),
     ("{f}:2: field 'prompt' must be a string, got number",)),
    ("response-null", line({"id": "a", "prompt": "p", "response": None}), ("{f}:1: field 'response' must be a string, got null",)),
    ("id-array", line({"id": [1], "prompt": "p", "response": "r"}), ("{f}:1: field 'id' must be a string, got array",)),
    ("id-boolean", line({"id": True, "prompt": "p", "response": "r"}), ("{f}:1: field 'id' must be a string, got boolean",)),
    ("empty-response", ok + line({"id": "b", "prompt": "p", "response": ""}), ("{f}:2: example 'b' has an empty response",)),
    ("duplicate-id-other-prompt", ok + line({"id": "b", "prompt": "q", "response": "r"}) + line({**VALID, "prompt": "other"}),
     ("{f}:3: id 'a' appears again with a different prompt (first at line 1)",)),
    ("chat-no-assistant", line({"id": "c", "messages": [{"role": "user", "content": "hi"}]}),
     ("{f}:1: 'messages' has no assistant turn",)),
    ("chat-message-not-object", line({"id": "c", "messages": ["hi"]}), ("{f}:1: messages[0] must be an object",)),
    ("messages-not-list", line({"id": "c", "messages": "hi"}), ("{f}:1: field 'messages' must be a list, got string",)),
    ("chat-and-prompt-same-id", ok + line({**CHAT, "id": "a"}), ("{f}:2: id 'a' mixes chat 'messages' and 'prompt'/'response'",)),
    ("duplicate-id-other-conversation",
     line(CHAT) + line({"id": "c", "messages": [{"role": "user", "content": "Why?"}, {"role": "assistant", "content": "B."}]}),
     ("{f}:2: id 'c' appears again with a different conversation (first at line 1)",)),
    ("integer-too-long", b'{"id": ' + b"7" * 5000 + b', "prompt": "p", "response": "r"}\n',
     ("{f}:1: malformed JSON (Exceeds the limit",)),
    ("nested-too-deeply", b'{"id": "a", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n", ("{f}:1: malformed JSON (nested too deeply)",)),
    ("lone-surrogate", ok + b'{"id": "b", "prompt": "\\ud800", "response": "r"}\n', ("{f}:2: a string holds a lone UTF-16 surrogate",)),
]


@pytest.mark.parametrize(("content", "needles"), [c[1:] for c in DATA_CASES], ids=[c[0] for c in DATA_CASES])
def test_bad_data_file(content: bytes | None, needles: tuple[str, ...], gpt2: Path, tmp_path: Path, capsys) -> None:
    f, out = tmp_path / "data.jsonl", tmp_path / "effects.csv"
    if content == DIRECTORY:
        f.mkdir()
    elif content is not None:
        f.write_bytes(content)
    assert_error(rank(gpt2, f, out), capsys, *(n.format(f=f) for n in needles), outputs=[out])


# Where each command reads a data file: a malformed line 2 must be reported as FILE:2 by all of them.
SLOTS: dict[str, list[object]] = {
    "rank --data": ["rank", "--model", "{m}", "--data", "{bad}", "--target-data", "{sft}", "--out", "{o}/e.csv"],
    "rank --target-data": ["rank", "--model", "{m}", "--data", "{sft}", "--target-data", "{bad}", "--out", "{o}/e.csv"],
    "train-sft --data": ["train-sft", "--model", "{m}", "--data", "{bad}", "--out", "{o}/run"],
    "train-sft --eval-data": ["train-sft", "--model", "{m}", "--data", "{sft}", "--eval-data", "{bad}", "--out", "{o}/run"],
    "validate --data": ["validate", "linearization", "--model", "{m}", "--data", "{bad}", "--target-data", "{sft}", "--out", "{o}/run"],
    "validate --target-data": ["validate", "linearization", "--model", "{m}", "--data", "{sft}", "--target-data", "{bad}",
                               "--out", "{o}/run"],
    "train-grpo --prompts": ["train-grpo", "--model", "{m}", "--prompts", "{bad}", "--out", "{o}/run"],
    "train-grpo --eval-prompts": ["train-grpo", "--model", "{m}", "--prompts", "{rl}", "--eval-prompts", "{bad}", "--out", "{o}/run"],
    "redistill --prompts": ["redistill", "--model", "{m}", "--prompts", "{bad}", "--out", "{o}/kept.jsonl"],
}


@pytest.mark.parametrize("slot", list(SLOTS))
def test_malformed_line_is_located_by_every_command(slot: str, gpt2: Path, files: dict[str, Path], tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(ok + b'{"id": "b", "prompt": "p", "response": "r"\n')
    o = tmp_path / "out"
    o.mkdir()
    subs = {"m": gpt2, "bad": bad, "sft": files["train"], "rl": files["prompts"], "o": o}
    argv = [str(a).format(**subs) for a in SLOTS[slot]]
    assert_error([*argv, "--quiet"], capsys, f"{bad}:2: malformed JSON", outputs=[Path(argv[argv.index("--out") + 1])])


RL_CASES: list[tuple[str, list[dict], str]] = [
    ("missing-answer", [{"id": "a", "prompt": "p"}], ":1: missing field 'answer'"),
    ("answer-not-string", [{"id": "a", "prompt": "p", "answer": ["x"]}], ":1: field 'answer' must be a string"),
    ("duplicate-id", [*RL, {"id": "p0", "prompt": "q", "answer": "z"}], ":3: duplicate prompt id 'p0'"),
    ("empty-prompt", [*RL, {"id": "p2", "prompt": "", "answer": "z"}], ":3: field 'prompt' is empty"),
]


@pytest.mark.parametrize(("rows", "needle"), [c[1:] for c in RL_CASES], ids=[c[0] for c in RL_CASES])
def test_bad_rl_prompts(rows: list[dict], needle: str, gpt2: Path, tmp_path: Path, capsys) -> None:
    f, out = write_jsonl(tmp_path / "rl.jsonl", rows), tmp_path / "run"
    assert_error(["train-grpo", "--model", gpt2, "--prompts", f, "--out", out, *GRPO_FAST], capsys, f"{f}{needle}", outputs=[out])


def test_response_empty_after_truncation(gpt2: Path, files: dict[str, Path], tmp_path: Path, capsys) -> None:
    out = tmp_path / "e.csv"
    assert_error(rank(gpt2, files["train"], out, "--max-length", "3"), capsys,
                 f"{files['train']}:1: example 't0' has no response tokens left after truncation to --max-length 3", outputs=[out])
    run_dir = tmp_path / "run"
    assert_error(["train-sft", "--model", gpt2, "--data", files["train"], "--out", run_dir, "--max-length", "2", "--quiet"],
                 capsys, "has no response tokens left after truncation to --max-length 2", outputs=[run_dir])


# --------------------------------------------------------------------------------------------
# Models and tokenizers
# --------------------------------------------------------------------------------------------

MODEL_CASES = [
    ("no-weights", "model directory has no weights"),
    ("no-tokenizer", "could not load a tokenizer from {d}"),
    ("corrupt-weights", "could not load a causal LM from {d}"),
    ("bad-config", "{d}/config.json: not valid JSON"),
]


@pytest.mark.parametrize(("name", "needle"), MODEL_CASES, ids=[c[0] for c in MODEL_CASES])
def test_broken_model_directory(name: str, needle: str, broken: dict[str, Path], files: dict[str, Path], tmp_path: Path, capsys) -> None:
    out = tmp_path / "e.csv"
    assert_error(rank(broken[name], files["train"], out), capsys, needle.format(d=broken[name]), outputs=[out])


def test_missing_model_for_training_and_validation(files: dict[str, Path], tmp_path: Path, capsys) -> None:
    missing, run_dir = tmp_path / "no-such-model", tmp_path / "run"
    for argv in (
        ["train-sft", "--model", missing, "--data", files["train"], "--out", run_dir],
        ["validate", "linearization", "--model", missing, "--data", files["train"], "--target-data", files["target"], "--out", run_dir],
        ["train-grpo", "--model", missing, "--prompts", files["prompts"], "--out", run_dir],
    ):
        assert_error(argv, capsys, f"model directory not found: {missing}", outputs=[run_dir])


def test_tokenizer_without_eos_pad_or_chat_template(broken: dict[str, Path], files: dict[str, Path], tmp_path: Path, capsys) -> None:
    m, out = broken["no-eos"], tmp_path / "e.csv"
    # Scoring needs neither EOS nor pad (sequences are right-padded with a mask) ...
    code, _, err = run(rank(m, files["train"], out, "--dtype", "float64"), capsys)
    assert code == 0, err
    assert len(pd.read_csv(out)) == 3
    # ... but chat data needs a chat template, and sampling needs EOS to ever finish a completion.
    out2 = tmp_path / "e2.csv"
    assert_error(rank(m, files["chat"], out2), capsys, f"{files['chat']}:1: example 'c' uses 'messages' but the tokenizer has no chat template",
                 outputs=[out2])
    kept, run_dir = tmp_path / "kept.jsonl", tmp_path / "run"
    assert_error(["redistill", "--model", m, "--prompts", files["prompts"], "--out", kept, "--quiet"], capsys,
                 f"the tokenizer of --model {m} has no EOS token", outputs=[kept])
    assert_error(["train-grpo", "--model", m, "--prompts", files["prompts"], "--out", run_dir, *GRPO_FAST], capsys,
                 "has no EOS token", outputs=[run_dir])


# --------------------------------------------------------------------------------------------
# Targets, parameter selection, optimiser state
# --------------------------------------------------------------------------------------------


def test_params_regex_invalid_or_matching_nothing(gpt2: Path, files: dict[str, Path], tmp_path: Path, capsys) -> None:
    out, run_dir = tmp_path / "e.csv", tmp_path / "run"
    assert_error(rank(gpt2, files["train"], out, "--params", "h.(0"), capsys, "--params is not a valid regular expression", outputs=[out])
    assert_error(["validate", "linearization", "--model", gpt2, "--data", files["train"], "--target-data", files["target"],
                  "--out", run_dir, "--params", "no_such_layer", "--quiet"], capsys, "no parameters match --params 'no_such_layer'",
                 outputs=[run_dir])


def test_direction_checkpoints_that_do_not_fit(model_dirs: dict[str, Path], files: dict[str, Path], tmp_path: Path, capsys) -> None:
    g, q, out = model_dirs["gpt2"], model_dirs["qwen2"], tmp_path / "e.csv"
    base = ["rank", "--model", g, "--data", files["train"], "--out", out, "--quiet", "--direction"]
    assert_error([*base, g, q], capsys, "direction checkpoints differ in parameter names", str(g), str(q), outputs=[out])
    assert_error([*base, q, q], capsys, "direction checkpoints have no parameter 'transformer.", outputs=[out])
    assert_error([*base, tmp_path / "nope", g], capsys, f"model directory not found: {tmp_path / 'nope'}", outputs=[out])


@pytest.fixture(scope="module")
def states(gpt2: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """--optimizer-state files that do not fit the GPT-2 model in different ways."""
    from sample_effect.models.loading import load_model

    d = tmp_path_factory.mktemp("states")
    model, _ = load_model(gpt2, "float64")
    named = list(model.named_parameters())

    def save(name: str, params: list[torch.nn.Parameter], names: list[str]) -> Path:
        opt = torch.optim.AdamW(params)
        for p in params:
            p.grad = torch.ones_like(p)
        opt.step()
        torch.save({"optimizer": opt.state_dict(), "param_names": names}, d / name)
        return d / name

    wrong = [torch.nn.Parameter(torch.zeros(3, dtype=torch.float64)) for _ in named]
    (d / "garbage.pt").write_bytes(b"\x80\x04 definitely not a torch file")
    return {
        "subset": save("subset.pt", [torch.nn.Parameter(p.detach().clone()) for _, p in named[:2]], [n for n, _ in named[:2]]),
        "shapes": save("shapes.pt", wrong, [n for n, _ in named]),
        "unknown": save("unknown.pt", wrong[:1], ["not.a.parameter"]),
        "garbage": d / "garbage.pt",
        "missing": d / "missing.pt",
    }


STATE_CASES = [
    ("subset", "no optimizer state for"),
    ("shapes", "has shape (3,), the model's parameter"),
    ("unknown", "names 1 parameter(s) the model does not have, e.g. 'not.a.parameter'"),
    ("garbage", "could not read --optimizer-state"),
    ("missing", "--optimizer-state file not found"),
]


@pytest.mark.parametrize(("kind", "needle"), STATE_CASES, ids=[c[0] for c in STATE_CASES])
def test_optimizer_state_that_does_not_match(kind: str, needle: str, gpt2: Path, files: dict[str, Path], states: dict[str, Path],
                                             tmp_path: Path, capsys) -> None:
    out = tmp_path / "e.csv"
    assert_error(rank(gpt2, files["train"], out, "--optimizer", "adamw", "--optimizer-state", states[kind]), capsys,
                 str(states[kind]), needle, outputs=[out])


# --------------------------------------------------------------------------------------------
# Hyper-parameters and settings (checked before anything is loaded)
# --------------------------------------------------------------------------------------------

SETTING_CASES: list[tuple[str, list[object], str]] = [
    ("rank-lr-zero", ["--lr", "0"], "--lr must be a positive number, got 0.0"),
    ("rank-lr-nan", ["--lr", "nan"], "--lr must be a positive number, got nan"),
    ("rank-clip-negative", ["--clip", "-1"], "--clip must be a positive number, got -1.0"),
    ("rank-beta1-negative", ["--optimizer", "adam", "--beta1", "-0.1"], "--beta1 must be in [0, 1), got -0.1"),
    ("rank-beta2-one", ["--optimizer", "adamw", "--beta2", "1"], "--beta2 must be in [0, 1), got 1.0"),
    ("rank-beta2-above-one", ["--optimizer", "adam", "--beta2", "1.5"], "--beta2 must be in [0, 1), got 1.5"),
    ("rank-eps-negative", ["--optimizer", "adam", "--eps=-1e-8"], "--eps must be >= 0"),
    ("rank-weight-decay-negative", ["--weight-decay", "-0.1"], "--weight-decay must be >= 0"),
    ("rank-memory-budget-unreadable", ["--memory-budget", "lots"], "cannot read memory budget 'lots'"),
    ("rank-memory-budget-zero", ["--memory-budget", "0GB"], "memory budget must be positive"),
    ("rank-jvp-with-adam", ["--method", "jvp", "--optimizer", "adam"], "--method jvp computes SGD effects"),
    ("rank-normalize-without-direction", ["--normalize"], "--normalize only applies to --direction"),
]


@pytest.mark.parametrize(("extra", "needle"), [c[1:] for c in SETTING_CASES], ids=[c[0] for c in SETTING_CASES])
def test_bad_rank_setting(extra: list[object], needle: str, gpt2: Path, files: dict[str, Path], tmp_path: Path, capsys) -> None:
    out = tmp_path / "e.csv"
    assert_error(rank(gpt2, files["train"], out, *extra), capsys, needle, outputs=[out])


def test_memory_budget_too_small_for_one_target_example(gpt2: Path, files: dict[str, Path], tmp_path: Path, capsys) -> None:
    out = tmp_path / "e.csv"
    argv = ["rank", "--model", gpt2, "--data", files["train"], "--target-data", files["target"], "--out", out,
            "--memory-budget", "1KB", "--quiet"]
    assert_error(argv, capsys, "is too small for one example", "--memory-budget", outputs=[out])


TRAIN_SETTING_CASES: list[tuple[str, str, list[object], str]] = [
    ("sft-lr-negative", "train-sft", ["--lr", "-1"], "--lr must be a positive number, got -1.0"),
    ("sft-schedule", "train-sft", ["--schedule", "linear"], "unknown --schedule 'linear'"),
    ("sft-batch-size", "train-sft", ["--batch-size", "0"], "--batch-size and --grad-accum must be >= 1"),
    ("sft-max-grad-norm", "train-sft", ["--max-grad-norm", "-1"], "--max-grad-norm must be positive, got -1.0"),
    ("sft-epochs", "train-sft", ["--epochs", "0"], "--epochs must be positive"),
    ("grpo-lr-zero", "train-grpo", ["--lr", "0"], "--lr must be a positive number, got 0.0"),
    ("grpo-temperature", "train-grpo", ["--temperature", "0"], "--temperature must be positive"),
    ("grpo-max-grad-norm", "train-grpo", ["--max-grad-norm", "-2"], "--max-grad-norm must be positive, got -2.0"),
    ("grpo-max-new-tokens", "train-grpo", ["--max-new-tokens", "0"], "--max-new-tokens must be >= 1, got 0"),
    ("redistill-samples", "redistill", ["--samples-per-prompt", "0"], "--samples-per-prompt must be >= 1, got 0"),
    ("redistill-temperature", "redistill", ["--temperature", "-1"], "--temperature must be >= 0 (0 = greedy), got -1.0"),
    ("redistill-finetune-out", "redistill", ["--finetune", "tiny"], "--finetune needs --finetune-out DIR"),
    ("validate-lrs-not-numbers", "validate", ["--lrs", "1e-3,abc"], "--lrs must be comma-separated numbers, got '1e-3,abc'"),
    ("validate-lrs-negative", "validate", ["--lrs", "1e-3,-1"], "--lrs must be comma-separated positive numbers, got '1e-3,-1'"),
    ("validate-clip-zero", "validate", ["--clip", "0"], "--clip must be a positive number, got 0.0"),
    ("validate-optimizer", "validate", ["--optimizer", "adagrad"], "unknown optimizer 'adagrad'"),
]


@pytest.mark.parametrize(("command", "extra", "needle"), [c[1:] for c in TRAIN_SETTING_CASES], ids=[c[0] for c in TRAIN_SETTING_CASES])
def test_bad_training_setting(command: str, extra: list[object], needle: str, gpt2: Path, files: dict[str, Path], tmp_path: Path,
                              capsys) -> None:
    out = tmp_path / ("kept.jsonl" if command == "redistill" else "run")
    head: dict[str, list[object]] = {
        "train-sft": ["train-sft", "--data", files["train"]],
        "train-grpo": ["train-grpo", "--prompts", files["prompts"]],
        "redistill": ["redistill", "--prompts", files["prompts"]],
        "validate": ["validate", "linearization", "--data", files["train"], "--target-data", files["target"]],
    }
    assert_error([*head[command], "--model", gpt2, "--out", out, "--quiet", *extra], capsys, needle, outputs=[out])


# --------------------------------------------------------------------------------------------
# Rewards
# --------------------------------------------------------------------------------------------


def test_reward_that_cannot_be_found(gpt2: Path, files: dict[str, Path], tmp_path: Path, reward_module: str, capsys) -> None:
    run_dir, kept = tmp_path / "run", tmp_path / "kept.jsonl"
    grpo = ["train-grpo", "--model", gpt2, "--prompts", files["prompts"], "--out", run_dir, *GRPO_FAST, "--reward"]
    redistill = ["redistill", "--model", gpt2, "--prompts", files["prompts"], "--out", kept, "--quiet", "--reward"]
    assert_error([*grpo, "kk2"], capsys, "unknown reward 'kk2' for --reward", outputs=[run_dir])
    assert_error([*redistill, "no_such_module_xyz:score"], capsys,
                 "cannot import reward module 'no_such_module_xyz' (--reward no_such_module_xyz:score)", outputs=[kept])
    assert_error([*redistill, f"{reward_module}_broken:reward"], capsys, f"cannot import reward module '{reward_module}_broken'",
                 "SyntaxError", outputs=[kept])
    sft = ["train-sft", "--model", gpt2, "--data", files["train"], "--out", run_dir, "--quiet", "--reward", f"{reward_module}:missing"]
    assert_error(sft, capsys, f"--reward '{reward_module}:missing': module '{reward_module}' has no function 'missing'", outputs=[run_dir])


@pytest.mark.parametrize(("command", "function", "needle"), [
    ("train-grpo", "boom", "raised ValueError: kaboom"),
    ("train-grpo", "nan", "returned nan"),
    ("redistill", "nan", "returned nan"),
    ("redistill", "text", "returned 'yes', not a number"),
])
def test_reward_that_misbehaves(command: str, function: str, needle: str, gpt2: Path, files: dict[str, Path], tmp_path: Path,
                                reward_module: str, capsys) -> None:
    name = f"{reward_module}:{function}"
    if command == "train-grpo":
        out = tmp_path / "run"
        argv: list[object] = ["train-grpo", "--model", gpt2, "--prompts", files["prompts"], "--out", out, *GRPO_FAST, "--reward", name]
    else:
        out = tmp_path / "kept.jsonl"
        argv = ["redistill", "--model", gpt2, "--prompts", files["prompts"], "--out", out, "--max-new-tokens", "2",
                "--quiet", "--reward", name]
    assert_error(argv, capsys, f"reward '{name}' {needle}", outputs=[out])


# --------------------------------------------------------------------------------------------
# Output paths
# --------------------------------------------------------------------------------------------


def test_output_in_a_missing_directory(gpt2: Path, files: dict[str, Path], tmp_path: Path, capsys) -> None:
    gone = tmp_path / "gone"
    assert_error(["kk", "--people", "2", "--n", "2", "--out", gone / "kk.jsonl"], capsys, f"output directory does not exist: {gone}")
    assert_error(["redistill", "--model", gpt2, "--prompts", files["prompts"], "--out", gone / "kept.jsonl"], capsys,
                 f"output directory does not exist: {gone}")
    assert_error(["train-sft", "--model", gpt2, "--data", files["train"], "--out", gone / "run"], capsys,
                 f"output directory's parent does not exist: {gone}", "--out")
    assert_error(["validate", "linearization", "--model", gpt2, "--data", files["train"], "--target-data", files["target"],
                  "--out", gone / "run"], capsys, f"output directory's parent does not exist: {gone}")
    assert_error(rank(gpt2, files["train"], gone / "e.csv", "--top-k", "2", "--export", tmp_path / "top.jsonl"), capsys,
                 f"output directory does not exist: {gone}", outputs=[tmp_path / "top.jsonl"])
    assert not gone.exists()


@pytest.mark.skipif(ROOT, reason="root ignores directory permissions")
def test_output_in_a_read_only_directory(gpt2: Path, files: dict[str, Path], tmp_path: Path, capsys) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        for argv, out in (
            (rank(gpt2, files["train"], ro / "e.csv"), ro / "e.csv"),
            (["kk", "--people", "2", "--n", "2", "--out", ro / "kk.jsonl"], ro / "kk.jsonl"),
            (["redistill", "--model", gpt2, "--prompts", files["prompts"], "--out", ro / "kept.jsonl"], ro / "kept.jsonl"),
            (["train-sft", "--model", gpt2, "--data", files["train"], "--out", ro / "run"], ro / "run"),
            (["validate", "linearization", "--model", gpt2, "--data", files["train"], "--target-data", files["target"],
              "--out", ro / "run"], ro / "run"),
        ):
            assert_error(argv, capsys, f"output directory is not writable: {ro}", outputs=[out])
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o700)


def test_output_path_that_is_the_wrong_kind(gpt2: Path, files: dict[str, Path], tmp_path: Path, capsys) -> None:
    (tmp_path / "dir.csv").mkdir()
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    assert_error(rank(gpt2, files["train"], tmp_path / "dir.csv"), capsys, f"output path is a directory: {tmp_path / 'dir.csv'}")
    assert_error(["train-sft", "--model", gpt2, "--data", files["train"], "--out", afile], capsys,
                 f"--out must be a directory, but {afile} is a file")
    assert_error(["demo", "--model", gpt2, "--out", afile, "--quiet"], capsys, f"--out must be a directory, but {afile} is a file")
    out = tmp_path / "e.csv"
    assert_error(rank(gpt2, files["train"], out, "--top-k", "1", "--export", out), capsys, "--export and --out must be different files",
                 outputs=[out])
    assert afile.read_text() == "keep me"


def test_existing_outputs_are_refused_then_replaced_with_overwrite(gpt2: Path, files: dict[str, Path], tmp_path: Path, capsys) -> None:
    effects, kk, kept, lin = tmp_path / "e.csv", tmp_path / "kk.jsonl", tmp_path / "kept.jsonl", tmp_path / "lin"
    lin.mkdir()
    for f in (effects, kk, kept, lin / "linearization.csv"):
        f.write_text("old")
    runs: list[tuple[list[object], Path]] = [
        (rank(gpt2, files["train"], effects, "--dtype", "float64"), effects),
        (["kk", "--people", "2", "--n", "2", "--out", kk], kk),
        (["redistill", "--model", gpt2, "--prompts", files["prompts"], "--out", kept, "--max-new-tokens", "2", "--quiet"], kept),
        (["validate", "linearization", "--model", gpt2, "--data", files["train"], "--target-data", files["target"], "--out", lin,
          "--lrs", "1e-4", "--quiet"], lin / "linearization.csv"),
    ]
    for argv, f in runs:
        assert_error(argv, capsys, f"output file already exists: {f}", "--overwrite")
        assert f.read_text() == "old"
    for argv, f in runs:
        code, _, err = run([*argv, "--overwrite"], capsys)
        assert code == 0, err
        assert f.read_text() != "old"
    assert len(pd.read_csv(effects)) == 3 and len(kk.read_text().splitlines()) == 2


def test_finished_run_directory_is_refused_then_replaced_with_overwrite(gpt2: Path, files: dict[str, Path], tmp_path: Path,
                                                                        capsys) -> None:
    run_dir = tmp_path / "run"
    (run_dir / "final").mkdir(parents=True)
    argv = ["train-sft", "--model", gpt2, "--data", files["train"], "--out", run_dir, "--steps", "1", "--batch-size", "2", "--quiet"]
    assert_error(argv, capsys, f"{run_dir} already holds a finished run (final/); pass --overwrite")
    assert not (run_dir / "metrics.csv").exists()
    code, _, err = run([*argv, "--overwrite"], capsys)
    assert code == 0, err
    assert (run_dir / "final" / "optimizer.pt").exists() and len(pd.read_csv(run_dir / "metrics.csv")) == 2


# --------------------------------------------------------------------------------------------
# demo (only the cheap, early failures) and --debug
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("extra", "needle"), [
    (["--model", "{missing}"], "model directory not found: {missing}"),
    (["--n-pool", "0"], "--n-pool must be >= 1, got 0"),
    (["--top-k", "0"], "--top-k must be >= 1, got 0"),
    (["--lr", "0"], "--lr must be a positive number, got 0.0"),
    (["--rl-start-data", "redistilled.jsonl"], "--rl-start-data takes NAME=FILE, got 'redistilled.jsonl'"),
    (["--rl-start-data", "a/b={missing}"], "--rl-start-data name 'a/b' must be letters, digits, '.', '_' or '-'"),
    (["--rl-start-data", "short-cot={missing}"], "--rl-start-data name 'short-cot' is used twice"),
    (["--rl-start-data", "mine={missing}"], "--rl-start-data file not found: {missing}"),
], ids=["missing-model", "n-pool", "top-k", "lr", "start-data-form", "start-data-name", "start-data-clash",
        "start-data-missing"])
def test_bad_demo_setting_writes_nothing(extra: list[str], needle: str, tmp_path: Path, capsys) -> None:
    out, missing = tmp_path / "demo", tmp_path / "no-such-model"
    argv = ["demo", "--out", out, "--quiet", *(e.format(missing=missing) for e in extra)]
    assert_error(argv, capsys, needle.format(missing=missing), outputs=[out])


def test_malformed_rl_start_file_fails_before_the_model_loads(tmp_path: Path, capsys) -> None:
    bad, out = tmp_path / "start.jsonl", tmp_path / "demo"
    bad.write_text('{"id": "a", "prompt": "p"}\n')
    assert_error(["demo", "--out", out, "--quiet", "--rl-start-data", f"mine={bad}"], capsys,
                 f"{bad}:1: missing field 'response'", outputs=[out])
    bad.write_text("")
    assert_error(["demo", "--out", out, "--quiet", "--rl-start-data", f"mine={bad}"], capsys,
                 f"{bad}: no examples (the file is empty)", outputs=[out])


def test_debug_lets_the_exception_through(gpt2: Path, tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(ok + b"{oops\n")
    out = tmp_path / "e.csv"
    with pytest.raises(SampleEffectError, match=r"bad\.jsonl:2: malformed JSON"):
        main([str(a) for a in rank(gpt2, bad, out, "--debug")])
    assert not out.exists()
    assert "sample-effect: error:" not in capsys.readouterr().err
