"""`torchrun --nproc_per_node 2 -m sample_effect rank`: the same effects as one process (gloo, CPU)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sample_effect.cli.main import main
from sample_effect.runtime.distributed import block

pytest.importorskip("torch.distributed")


def test_blocks_cover_contiguously() -> None:
    for n in (0, 1, 5, 7):
        parts = [block(n, r, 3) for r in range(3)]
        assert [i for p in parts for i in p] == list(range(n))


@pytest.mark.slow
def test_two_processes_equal_one(tmp_path: Path, model_dirs, data_files) -> None:
    args = ["rank", "--model", str(model_dirs["qwen2"]), "--data", str(data_files["train"]), "--target", "self",
            "--optimizer", "adamw", "--clip", "1.0", "--dtype", "float64", "--quiet"]
    one = tmp_path / "one.parquet"  # full precision (CSV keeps 10 digits)
    assert main([*args, "--out", str(one)]) == 0
    two = tmp_path / "two.parquet"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
           "-m", "sample_effect", *args, "--out", str(two)]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=400, env={"OMP_NUM_THREADS": "1", **__import__("os").environ})
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("scored 5 examples") == 1  # rank 0 alone reports and writes
    a, b = pd.read_parquet(one), pd.read_parquet(two)
    assert list(a["id"]) == list(b["id"])
    for col in ("effect", "loss", "grad_norm"):
        np.testing.assert_allclose(b[col], a[col], rtol=1e-9, atol=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.parquet", "two.parquet"]


# tests/ (conftest) and tests/growth (test_rl_predict's reward, named as module:function by the RL case)
HELPERS = [Path(__file__).resolve().parents[1], Path(__file__).resolve().parents[1] / "growth"]


def _torchrun(args: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    import os

    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone", "-m", "sample_effect", *args]
    path = os.pathsep.join([*map(str, HELPERS), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=400, env=env, cwd=cwd)


@pytest.mark.slow
def test_predict_sft_two_processes_equal_one(tmp_path: Path, model_dirs, data_files) -> None:
    """Per-example gradient rows and the Hessian-vector products are split over ranks; the curves are the same."""
    import json

    args = ["predict-sft", "--model", str(model_dirs["llama"]), "--data", f"a={data_files['train']}",
            "--data", f"b={data_files['target']}", "--target-data", str(data_files["target"]), "--optimizer", "sgd",
            "--lr", "1e-3", "--batch-size", "2", "--steps", "3", "--dtype", "float64", "--quiet"]
    assert main([*args, "--out", str(tmp_path / "one.json")]) == 0
    run = _torchrun([*args, "--out", str(tmp_path / "two.json")])
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("predicted 2 dataset(s)") == 1  # rank 0 alone reports and writes
    a, b = json.loads((tmp_path / "one.json").read_text()), json.loads((tmp_path / "two.json").read_text())
    assert a["datasets"][0]["noise_total"] != 0.0  # (b: 2 examples in batches of 2, no noise)
    for da, db in zip(a["datasets"], b["datasets"]):
        for key in ("dataset_effect", "predicted_total_change", "positive_total", "noise_total", "start_value"):
            assert db[key] == pytest.approx(da[key], rel=1e-9, abs=1e-300)
    ca, cb = pd.read_csv(tmp_path / "one.csv"), pd.read_csv(tmp_path / "two.csv")
    np.testing.assert_allclose(cb["predicted"], ca["predicted"], rtol=1e-9)


@pytest.mark.slow
def test_predict_rl_two_processes_equal_one(tmp_path: Path, model_dirs, data_files, monkeypatch) -> None:
    """Each rank samples and scores its block of prompts (per-prompt generators), the Hessian terms are split and
    the kept gradients gathered for the batch term: the record equals the single-process one."""
    import json

    monkeypatch.syspath_prepend(str(HELPERS[1]))  # the in-process run imports the reward module too

    from conftest import TRAIN, write_jsonl

    rl = write_jsonl(tmp_path / "rl.jsonl", [{"id": f"p{i}", "prompt": r["prompt"], "answer": ""} for i, r in enumerate(TRAIN[:5])])
    args = ["predict-rl", "--model", str(model_dirs["gpt2"]), "--prompts", str(rl), "--reward", "test_rl_predict:long_completion",
            "--group-size", "4", "--max-new-tokens", "3", "--target-data", str(data_files["target"]), "--lr", "1e-3",
            "--optimizer", "sgd", "--clip", "0.05", "--prompts-per-step", "3", "--bootstrap", "100", "--dtype", "float64",
            "--quiet"]
    assert main([*args, "--out", str(tmp_path / "one.json"), "--ranking", str(tmp_path / "one.csv")]) == 0
    run = _torchrun([*args, "--out", str(tmp_path / "two.json"), "--ranking", str(tmp_path / "two.csv")])
    assert run.returncode == 0, run.stderr[-3000:]
    (a,), (b,) = json.loads((tmp_path / "one.json").read_text()), json.loads((tmp_path / "two.json").read_text())
    assert a["noise_hessian_effect"] is not None and a["noise_batch_effect"] is not None  # both terms ran
    for key, va in a.items():
        if key == "seconds":
            continue
        if isinstance(va, float):
            assert b[key] == pytest.approx(va, rel=1e-9, abs=1e-300), key
        elif isinstance(va, list) and va and isinstance(va[0], float):
            np.testing.assert_allclose(b[key], va, rtol=1e-9, err_msg=key)
        else:
            assert b[key] == va, key
    ra, rb = pd.read_csv(tmp_path / "one.csv"), pd.read_csv(tmp_path / "two.csv")
    assert list(ra["id"]) == list(rb["id"])
    np.testing.assert_allclose(rb["effect"], ra["effect"], rtol=1e-9)
