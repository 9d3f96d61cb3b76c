"""Fast kernels against the vmap reference and the float64 oracle (tests/test_oracle.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import ARCHS, TRAIN

from sample_effect import (
    ComputeConfig,
    SampleEffectError,
    UpdateConfig,
    compute_effects,
    load_model,
    select_parameters,
)
from sample_effect.data import examples_from_records, tokenize_examples
from sample_effect.targets import TargetVector


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("subset", [None, r"\.(attn|self_attn)\."])
@pytest.mark.parametrize("wd", [0.0, 0.05])
def test_jvp_sgd_equals_vmap_reference(model_dirs, arch, subset, wd):
    model, tok = load_model(model_dirs[arch], "float64")
    params = select_parameters(model, subset)
    exs, _ = tokenize_examples(examples_from_records(list(enumerate(TRAIN, 1))), tok)
    gen = torch.Generator().manual_seed(0)
    G = TargetVector({n: torch.randn(p.shape, generator=gen, dtype=torch.float64) for n, p in params.items()}, "t")
    upd = UpdateConfig("sgd", weight_decay=wd)
    ref = compute_effects(model, params, exs, G, upd, compute=ComputeConfig(batch_size=2, progress=False))
    fast = compute_effects(model, params, exs, G, upd, compute=ComputeConfig(batch_size=2, progress=False, method="jvp"))
    np.testing.assert_allclose(fast.effect, ref.effect, rtol=1e-10, atol=1e-12 * np.abs(ref.effect).max())
    np.testing.assert_allclose(fast.loss, ref.loss, rtol=1e-12)
    assert np.isnan(fast.grad_norm).all()  # the jvp path forms no per-example gradient


def test_jvp_refuses_what_it_cannot_compute(model_dirs):
    model, tok = load_model(model_dirs["gpt2"], "float64")
    params = select_parameters(model)
    exs, _ = tokenize_examples(examples_from_records(list(enumerate(TRAIN, 1))), tok)
    G = TargetVector({n: torch.zeros_like(p) for n, p in params.items()}, "t")
    for upd in (UpdateConfig("adamw"), UpdateConfig("sgd", clip=1.0)):
        with pytest.raises(SampleEffectError, match="SGD effects without clipping only"):
            compute_effects(model, params, exs, G, upd, compute=ComputeConfig(progress=False, method="jvp"))


def test_rank_method_jvp_matches_vmap(model_dirs, data_files, tmp_path):
    import pandas as pd

    from sample_effect.cli import main

    base = ["rank", "--model", str(model_dirs["qwen2"]), "--data", str(data_files["train"]), "--target-data",
            str(data_files["target"]), "--dtype", "float64", "--quiet"]
    assert main([*base, "--out", str(tmp_path / "v.csv")]) == 0
    assert main([*base, "--out", str(tmp_path / "j.csv"), "--method", "jvp"]) == 0
    v, j = pd.read_csv(tmp_path / "v.csv"), pd.read_csv(tmp_path / "j.csv")
    assert list(v["id"]) == list(j["id"])
    np.testing.assert_allclose(j["effect"], v["effect"], rtol=1e-9)
    assert main([*base, "--out", str(tmp_path / "x.csv"), "--method", "jvp", "--clip", "1"]) == 2
