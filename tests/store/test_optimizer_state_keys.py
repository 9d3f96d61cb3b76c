"""The projection cache and the scoring cache are keyed by the optimiser state: a cache made under one
--optimizer-state is never served under another."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from sample_effect.cli.main import main
from sample_effect.models.loading import load_model


@pytest.fixture(scope="module")
def two_states(model_dirs, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two AdamW states of the Qwen2 model after one step on different (constant) gradients."""
    d = tmp_path_factory.mktemp("two-states")
    model, _ = load_model(model_dirs["qwen2"], "float64")
    named = list(model.named_parameters())
    paths = []
    for name, scale in (("a.pt", 1.0), ("b.pt", -3.0)):
        params = [torch.nn.Parameter(p.detach().clone()) for _, p in named]
        opt = torch.optim.AdamW(params)
        for i, p in enumerate(params):
            p.grad = torch.full_like(p, scale * (1 + i % 3))
        opt.step()
        torch.save({"optimizer": opt.state_dict(), "param_names": [n for n, _ in named]}, d / name)
        paths.append(d / name)
    return paths[0], paths[1]


def _base(model_dirs, data_files) -> list[str]:
    return ["--model", str(model_dirs["qwen2"]), "--data", str(data_files["train"]), "--dtype", "float64", "--quiet",
            "--params", r"layers\.1\.", "--optimizer", "adamw"]


def test_projection_made_under_another_optimizer_state_is_refused(model_dirs, data_files, two_states, tmp_path,
                                                                  capsys) -> None:
    a, b = two_states
    base = _base(model_dirs, data_files)
    cache = tmp_path / "proj"
    assert main(["project", *base, "--optimizer-state", str(a), "--out", str(cache), "--dim", "64"]) == 0
    rank = ["rank", *base, "--target-data", str(data_files["target"]), "--projection", str(cache)]
    assert main([*rank, "--optimizer-state", str(a), "--out", str(tmp_path / "a.csv")]) == 0
    capsys.readouterr()
    assert main([*rank, "--optimizer-state", str(b), "--out", str(tmp_path / "b.csv")]) == 2
    assert "--projection" in capsys.readouterr().err
    assert not (tmp_path / "b.csv").exists()
    # without a state the fresh optimiser differs from A's as well
    assert main([*rank, "--out", str(tmp_path / "fresh.csv")]) == 2
    assert not (tmp_path / "fresh.csv").exists()
    # `project` into the same directory under B refuses to mix the two
    assert main(["project", *base, "--optimizer-state", str(b), "--out", str(cache), "--dim", "64"]) == 2


def test_scoring_cache_is_recomputed_under_another_optimizer_state(model_dirs, data_files, two_states, tmp_path,
                                                                   capsys) -> None:
    a, b = two_states
    rank = ["rank", *_base(model_dirs, data_files), "--target-data", str(data_files["target"])]
    cache = tmp_path / "cache"
    assert main([*rank, "--optimizer-state", str(a), "--cache-dir", str(cache), "--out", str(tmp_path / "a.csv")]) == 0
    capsys.readouterr()
    assert main([*rank, "--optimizer-state", str(b), "--cache-dir", str(cache), "--out", str(tmp_path / "b.csv")]) == 0
    assert "from finished shards" not in capsys.readouterr().out  # nothing of A's run is reused
    assert main([*rank, "--optimizer-state", str(b), "--out", str(tmp_path / "b-exact.csv")]) == 0
    ea, eb = (pd.read_csv(tmp_path / f"{x}.csv").set_index("id")["effect"] for x in ("a", "b"))
    exact = pd.read_csv(tmp_path / "b-exact.csv").set_index("id")["effect"]
    assert not ea.loc[eb.index].equals(eb)
    pd.testing.assert_series_equal(eb.loc[exact.index], exact)
    assert len(list(cache.glob("*/manifest.json"))) == 2
    # --resume under a third state (a fresh optimiser) finds no run to continue
    assert main([*rank, "--cache-dir", str(cache), "--resume", "--out", str(tmp_path / "x.csv")]) == 2
    assert "holds no run with these settings" in capsys.readouterr().err
