"""Random-projection cache: exact against an explicit matrix, unbiased, resumable, and reachable from the CLI."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TRAIN

from sample_effect import ComputeConfig, SampleEffectError, UpdateConfig, load_model
from sample_effect.data.examples import examples_from_records, tokenize_examples
from sample_effect.engine.projection import ProjectionConfig, _blocks, project_vector
from sample_effect.engine.vectors import TargetVector
from sample_effect.models.loading import select_parameters
from sample_effect.scoring.effects import compute_effects
from sample_effect.store.projection import load_projection, project_examples

SUBSET = r"layers\.1\.self_attn\.(q|k)_proj"


def _setup(model_dirs, subset=SUBSET):
    model, tok = load_model(model_dirs["qwen2"], "float64")
    params = select_parameters(model, subset)
    exs, _ = tokenize_examples(examples_from_records(list(enumerate(TRAIN, 1))), tok)
    return model, params, exs


def _explicit_p(params, cfg):
    rows = []
    for i, (_n, p) in enumerate(params.items()):
        rows.append(torch.cat([b for _, _, b in _blocks(i, p.numel(), cfg, torch.float64, torch.device("cpu"))]))
    return torch.cat(rows)  # [n_params, k]


@pytest.mark.parametrize("kind", ["rademacher", "gaussian", "countsketch"])
def test_projection_equals_explicit_matrix_times_update(model_dirs, tmp_path, kind):
    model, params, exs = _setup(model_dirs)
    cfg = ProjectionConfig(dim=8, kind=kind, seed=3)
    upd = UpdateConfig("adamw", clip=0.5)
    project_examples(model, params, exs, tmp_path / "c", upd, cfg, compute=ComputeConfig(batch_size=2, progress=False))
    cache = load_projection(tmp_path / "c")
    assert cache.ids == [e.id for e in exs]
    P = _explicit_p(params, cfg)
    if kind == "rademacher":
        assert torch.allclose((P * 8**0.5).abs(), torch.ones_like(P))
        assert 0.3 < float((P > 0).double().mean()) < 0.7
    if kind == "countsketch":
        assert torch.equal((P != 0).sum(1), torch.ones(P.shape[0], dtype=torch.long))  # one bucket per coordinate
    # the update each example's step makes, from the reference engine: d = e(s) for unit G per coordinate
    from sample_effect.engine.core import iter_example_gradients
    from sample_effect.update.optim import OptimizerState, clip_coefficients

    st = OptimizerState()
    for batch in iter_example_gradients(model, params, exs, ComputeConfig(batch_size=2, progress=False)):
        sq = sum((g.flatten(1) ** 2).sum(1) for g in batch.grads.values())
        coef = clip_coefficients(sq, 0.5)
        d = torch.cat([
            upd.rule.step(g * coef.view(-1, *([1] * (g.dim() - 1))), params[n].detach(), st.hyper(n, upd),
                          st.param_state(n)).flatten(1)
            for n, g in batch.grads.items()
        ], dim=1)
        expected = d @ P
        np.testing.assert_allclose(cache.proj[batch.indices].numpy(), expected.float().numpy(), rtol=2e-5, atol=1e-6)


def test_projected_effects_are_unbiased_and_converge_with_k(model_dirs, tmp_path):
    model, params, exs = _setup(model_dirs, r"layers\.1\.")
    from sample_effect.engine.core import mean_loss_gradient

    G = {n: -g for n, g in mean_loss_gradient(model, params, exs, ComputeConfig(progress=False))[0].items()}
    upd = UpdateConfig("sgd")
    exact = compute_effects(model, params, exs, TargetVector(G, "t"), upd, compute=ComputeConfig(progress=False)).effect
    for kind in ("rademacher", "countsketch"):
        _check_convergence(model, params, exs, G, upd, exact, tmp_path / kind, kind)


def _check_convergence(model, params, exs, G, upd, exact, tmp_path, kind):  # type: ignore[no-untyped-def]
    errs = {}
    for k in (16, 1024):
        ests = []
        for seed in range(6):
            d = tmp_path / f"k{k}s{seed}"
            project_examples(model, params, exs, d, upd, ProjectionConfig(k, kind, seed), compute=ComputeConfig(progress=False))
            ests.append(load_projection(d).scores(G))
        ests = np.array(ests)
        errs[k] = np.abs(ests - exact).mean() / np.abs(exact).mean()
        if k == 1024:  # unbiased: the mean over seeds is closer than a single draw
            assert np.abs(ests.mean(0) - exact).mean() < np.abs(ests[0] - exact).mean()
    assert errs[1024] < errs[16] / 3  # error ~ 1/sqrt(k): 8x smaller expected
    assert errs[1024] < 0.1


def test_projection_resumes_after_a_crash_and_refuses_other_settings(model_dirs, tmp_path, monkeypatch):
    model, params, exs = _setup(model_dirs)
    cfg = ProjectionConfig(dim=4)
    upd = UpdateConfig("sgd")
    compute = ComputeConfig(batch_size=2, progress=False)
    project_examples(model, params, exs, tmp_path / "full", upd, cfg, compute=compute)
    real_save = __import__("safetensors.torch", fromlist=["save_file"]).save_file
    calls = {"n": 0}

    def crashing(*a, **k):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_save(*a, **k)

    monkeypatch.setattr("safetensors.torch.save_file", crashing)
    with pytest.raises(KeyboardInterrupt):
        project_examples(model, params, exs, tmp_path / "part", upd, cfg, compute=compute)
    monkeypatch.setattr("safetensors.torch.save_file", real_save)
    manifest = json.loads((tmp_path / "part" / "manifest.json").read_text())
    assert len(manifest["shards"]) == 1
    assert not list((tmp_path / "part").glob("*.tmp"))  # nothing half-written is left
    with pytest.raises(SampleEffectError, match=r"holds \d+ of 5 examples"):
        load_projection(tmp_path / "part")
    project_examples(model, params, exs, tmp_path / "part", upd, cfg, compute=compute)
    a, b = load_projection(tmp_path / "full"), load_projection(tmp_path / "part")
    assert a.ids == b.ids and torch.equal(a.proj, b.proj)
    with pytest.raises(SampleEffectError, match="other settings"):
        project_examples(model, params, exs, tmp_path / "part", UpdateConfig("sgd", clip=1.0), cfg, compute=compute)


def test_cli_project_then_rank_from_the_cache(model_dirs, data_files, tmp_path):
    from sample_effect.cli.main import main

    base = ["--model", str(model_dirs["qwen2"]), "--data", str(data_files["train"]), "--dtype", "float64", "--quiet",
            "--params", r"layers\.1\."]
    assert main(["project", *base, "--out", str(tmp_path / "cache"), "--dim", "2048"]) == 0
    assert main(["rank", *base, "--target-data", str(data_files["target"]), "--out", str(tmp_path / "exact.csv")]) == 0
    assert main(["rank", *base, "--target-data", str(data_files["target"]), "--out", str(tmp_path / "proj.csv"),
                 "--projection", str(tmp_path / "cache")]) == 0
    ex = pd.read_csv(tmp_path / "exact.csv").set_index("id")
    pr = pd.read_csv(tmp_path / "proj.csv").set_index("id").loc[ex.index]
    assert np.corrcoef(ex["effect"], pr["effect"])[0, 1] > 0.9
    # a cache from other settings is refused, not silently used
    assert main(["rank", *base, "--target-data", str(data_files["target"]), "--out", str(tmp_path / "bad.csv"),
                 "--projection", str(tmp_path / "cache"), "--clip", "0.5"]) == 2
    assert not (tmp_path / "bad.csv").exists()
    # the target is projected with the same P as the examples: <P d, P G> with G's own projection
    cache = load_projection(tmp_path / "cache")
    g = {n: torch.zeros(1) for n in cache.manifest["params"][:1]}
    with pytest.raises(SampleEffectError, match="no values"):
        project_vector(g, cache.manifest["params"], cache.config)
