"""`rank --cache-dir`: a run killed mid-way resumes from its finished shards and gives the same table."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from sample_effect.cli.main import main
from sample_effect.store.cache import DELAY_ENV


def test_killed_run_resumes_to_identical_table(tmp_path: Path, model_dirs, data_files, capsys) -> None:
    base = ["rank", "--model", str(model_dirs["llama"]), "--data", str(data_files["train"]), "--target-data",
            str(data_files["target"]), "--optimizer", "adamw", "--clip", "1.0", "--dtype", "float64", "--shard-size", "1"]
    ref = tmp_path / "ref.csv"
    assert main([*base, "--cache-dir", str(tmp_path / "c1"), "--out", str(ref), "--quiet"]) == 0

    cache, out = tmp_path / "c2", tmp_path / "out.csv"
    env = {**os.environ, DELAY_ENV: "2"}
    proc = subprocess.Popen([sys.executable, "-m", "sample_effect", *base, "--cache-dir", str(cache), "--out", str(out),
                             "--quiet"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while not list(cache.glob("*/shard-*.npz")) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    shards = list(cache.glob("*/shard-*.npz"))
    assert 1 <= len(shards) < 5 and not out.exists()
    assert not list(cache.glob("*/.*.tmp"))  # atomic: no half-written shard survives

    capsys.readouterr()
    assert main([*base, "--cache-dir", str(cache), "--resume", "--out", str(out)]) == 0
    assert f"cache: {len(shards)} of 5 examples from finished shards" in capsys.readouterr().out
    assert out.read_bytes() == ref.read_bytes()
    assert len(list(cache.glob("*/shard-*.npz"))) == 5

    # Any changed setting is another key: --resume finds nothing to continue from.
    assert main([*base[:-4], "--clip", "2.0", *base[-4:], "--cache-dir", str(cache), "--resume",
                 "--out", str(tmp_path / "x.csv"), "--quiet"]) == 2
    assert "holds no run with these settings" in capsys.readouterr().err
    # The same run again is served from the cache alone.
    assert main([*base, "--cache-dir", str(cache), "--out", str(tmp_path / "again.csv")]) == 0
    assert "cache: 5 of 5 examples" in capsys.readouterr().out
    assert (tmp_path / "again.csv").read_bytes() == ref.read_bytes()
