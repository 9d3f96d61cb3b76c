"""`torchrun --nproc_per_node 2 -m sample_effect rank`: the same effects as one process (gloo, CPU)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sample_effect.cli import main
from sample_effect.distributed import block

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
