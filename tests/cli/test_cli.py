"""`sample-effect rank` end to end: outputs, export, and one-line errors that leave no file behind."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest
import torch
from conftest import TRAIN, write_jsonl

from sample_effect import ComputeConfig, LossTarget, UpdateConfig, load_examples, load_model
from sample_effect.cli.main import main
from sample_effect.data.examples import tokenize_examples
from sample_effect.scoring.effects import score_examples


def run(argv, capsys):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_rank_csv_matches_api_and_exports_top_k(model_dirs, data_files, tmp_path, capsys):
    out, exp = tmp_path / "effects.csv", tmp_path / "top.jsonl"
    code, stdout, err = run(
        ["rank", "--model", model_dirs["gpt2"], "--data", data_files["train"], "--target-data", data_files["target"],
         "--out", out, "--optimizer", "adamw", "--weight-decay", "0.01", "--clip", "1.0", "--dtype", "float64", "--top-k", 2, "--export", exp, "--quiet"],
        capsys,
    )
    assert code == 0, err
    assert "scored 5 examples (6 responses)" in stdout
    df = pd.read_csv(out)
    assert {"id", "effect", "rank", "loss", "n_tokens", "grad_norm"} <= set(df.columns)
    assert df["rank"].tolist() == [1, 2, 3, 4, 5]
    assert df["effect"].is_monotonic_decreasing
    model, tok = load_model(model_dirs["gpt2"], "float64")
    target, _ = tokenize_examples(load_examples(data_files["target"]), tok)
    api = score_examples(
        model, tok, load_examples(data_files["train"]), LossTarget(target), UpdateConfig("adamw", clip=1.0),
        compute=ComputeConfig(progress=False),
    )
    assert api["id"].tolist() == df["id"].tolist()
    assert torch.allclose(torch.tensor(api["effect"].values), torch.tensor(df["effect"].values), rtol=1e-8)
    # The export holds every line of the top-2 examples, in rank order, in the input format.
    lines = [json.loads(x) for x in exp.read_text().splitlines()]
    top2 = df["id"].head(2).tolist()
    assert [r["id"] for r in lines] == [r["id"] for i in top2 for r in TRAIN if r["id"] == i]
    assert all(r in TRAIN for r in lines)


def test_rank_parquet_self_and_direction(model_dirs, data_files, tmp_path, capsys):
    pytest.importorskip("pyarrow")
    out = tmp_path / "e.parquet"
    code, _, err = run(["rank", "--model", model_dirs["qwen2"], "--data", data_files["train"], "--target", "self", "--out", out, "--quiet"], capsys)
    assert code == 0, err
    assert len(pd.read_parquet(out)) == 5
    out2 = tmp_path / "d.csv"
    code, _, err = run(
        ["rank", "--model", model_dirs["qwen2"], "--data", data_files["train"], "--direction", model_dirs["qwen2"],
         model_dirs["qwen2"], "--normalize", "--out", out2, "--quiet"],
        capsys,
    )
    assert code == 2 and "direction is zero" in err and not out2.exists()


@pytest.fixture
def other_arch_dir(workdir, tokenizer):
    from sample_effect.models.tiny import build_tiny_model, save_model

    d = workdir / "gpt2-wide"
    if not d.exists():
        save_model(build_tiny_model("gpt2", tokenizer, torch.float64, hidden=48), tokenizer, d)
    return d


def test_errors_are_one_line_and_leave_no_output(model_dirs, data_files, tmp_path, capsys, other_arch_dir):
    m, train = model_dirs["gpt2"], data_files["train"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "prompt": "p", "response": "r"}\nnot json\n')
    empty = write_jsonl(tmp_path / "empty.jsonl", [])
    state = tmp_path / "state.pt"
    torch.save({"optimizer": torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))]).state_dict(), "param_names": ["nope"]}, state)
    existing = tmp_path / "exists.csv"
    existing.write_text("keep me")
    out = tmp_path / "out.csv"
    base = ["rank", "--model", m, "--data", train, "--quiet"]
    cases = [
        (["rank", "--model", m, "--data", tmp_path / "missing.jsonl", "--target", "self", "--out", out], "data file not found"),
        (["rank", "--model", m, "--data", bad, "--target", "self", "--out", out], "bad.jsonl:2: malformed JSON"),
        (["rank", "--model", m, "--data", empty, "--target", "self", "--out", out], "no examples"),
        ([*base, "--target", "self", "--out", out, "--optimizer", "adagrad"], "unknown optimizer 'adagrad'"),
        ([*base, "--target", "self", "--out", out, "--dtype", "float8"], "unknown dtype 'float8'"),
        ([*base, "--target", "self", "--out", out, "--lr", "-1"], "--lr must be a positive number"),
        ([*base, "--target", "self", "--out", out, "--clip", "0"], "--clip must be a positive number"),
        ([*base, "--target", "self", "--out", out, "--optimizer", "adam", "--beta1", "1.0"], "--beta1 must be in [0, 1)"),
        ([*base, "--target", "self", "--out", out, "--params", "no_such_layer"], "no parameters match --params"),
        ([*base, "--direction", m, other_arch_dir, "--out", out], "differ in the shape"),
        ([*base, "--target", "self", "--out", out, "--optimizer", "adamw", "--optimizer-state", state], "does not have, e.g. 'nope'"),
        ([*base, "--target", "self", "--out", out, "--optimizer-state", state], "use --optimizer adam or adamw"),
        ([*base, "--target", "self", "--out", existing], "already exists"),
        ([*base, "--target", "self", "--out", tmp_path / "nodir" / "o.csv"], "output directory does not exist"),
        ([*base, "--target", "self", "--out", tmp_path / "o.txt"], "must end in .csv or .parquet"),
        ([*base, "--target", "self", "--out", out, "--memory-budget", "1KB"], "too small for one example"),
        ([*base, "--target-data", tmp_path / "missing.jsonl", "--out", out], "data file not found"),
        (["rank", "--model", tmp_path, "--data", train, "--target", "self", "--out", out], "no config.json"),
        ([*base, "--target", "self", "--out", out, "--top-k", "2"], "--top-k and --export go together"),
    ]
    for argv, message in cases:
        code, _, err = run(argv, capsys)
        lines = [x for x in err.strip().splitlines() if x]
        assert code == 2, (argv, err)
        assert len(lines) == 1 and message in lines[0], (message, err)
        assert "Traceback" not in err
        assert not out.exists()
    assert existing.read_text() == "keep me"


def test_console_script_runs_without_traceback(data_files, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "sample_effect", "rank", "--model", tmp_path / "none", "--data", data_files["train"],
         "--target", "self", "--out", tmp_path / "o.csv"],
        capture_output=True, text=True, check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"sample-effect: error: model directory not found: {tmp_path / 'none'}"


def test_kk_command_writes_puzzles(tmp_path, capsys):
    out = tmp_path / "kk.jsonl"
    code, _, err = run(["kk", "--people", 3, "--n", 4, "--seed", 7, "--style", "long-cot", "--out", out], capsys)
    assert code == 0, err
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == 4 and {"id", "prompt", "response", "answer", "names", "statements", "solution"} <= set(rows[0])
    code, _, err = run(["kk", "--people", 9, "--n", 4, "--out", tmp_path / "x.jsonl"], capsys)
    assert code == 2 and "between 2 and 8" in err and not (tmp_path / "x.jsonl").exists()


def test_log_level_controls_warnings(model_dirs, data_files, tmp_path, caplog):
    """A truncation warning is logged at the default level and silenced by --log-level error."""
    import logging

    base = ["rank", "--model", str(model_dirs["gpt2"]), "--data", str(data_files["train"]), "--target", "self",
            "--max-length", "24", "--quiet"]
    try:
        with caplog.at_level(logging.DEBUG, logger="root"):
            assert main([*base, "--out", str(tmp_path / "a.csv")]) == 0
            assert any("truncated" in r.getMessage() for r in caplog.records)
            caplog.clear()
            assert main([*base, "--out", str(tmp_path / "b.csv"), "--log-level", "error"]) == 0
            assert not any("truncated" in r.getMessage() for r in caplog.records)
    finally:
        logging.getLogger("sample_effect").setLevel(logging.NOTSET)
