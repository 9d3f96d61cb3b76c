"""Lower precisions against the float64 engine on the same weights: the documented tolerances."""

from __future__ import annotations

import numpy as np
import pytest

from sample_effect import (
    ComputeConfig,
    LossTarget,
    UpdateConfig,
    load_examples,
    load_model,
    score_examples_result,
)
from sample_effect.data.examples import tokenize_examples
from sample_effect.engine.core import ghost_plans

# Documented in docs/guide.md: relative to max |effect|.
TOLERANCE = {"float32": 1e-4, "bfloat16": 3e-2}


@pytest.mark.parametrize("arch", ["gpt2", "qwen2"])
def test_float32_and_bfloat16_track_float64(model_dirs, data_files, arch):
    effects = {}
    for dtype in ("float64", "float32", "bfloat16"):
        model, tok = load_model(model_dirs[arch], dtype)
        target, _ = tokenize_examples(load_examples(data_files["target"]), tok)
        for opt in ("sgd", "adamw"):
            res = score_examples_result(
                model, tok, load_examples(data_files["train"]), LossTarget(target), UpdateConfig(opt, clip=1.0),
                compute=ComputeConfig(progress=False),
            )
            assert res.effect.dtype == np.float64 and np.all(np.isfinite(res.effect))
            effects[dtype, opt] = res.effect
        # the ghost self-check passes at every precision: a bfloat16 model stays on the ghost path
        checks = ghost_plans(model).results(model)
        assert checks and all(not failed for failed in checks.values()), (dtype, checks)
    for dtype, tol in TOLERANCE.items():
        for opt in ("sgd", "adamw"):
            ref = effects["float64", opt]
            err = np.abs(effects[dtype, opt] - ref).max() / np.abs(ref).max()
            assert err <= tol, (dtype, opt, err)


@pytest.mark.parametrize("opt", ["sgd", "adamw"])
def test_bfloat16_vmap_path_takes_a_bfloat16_target(model_dirs, opt):
    """The vmap path dots float32-accumulated updates with G; a G kept in the model's bfloat16 must
    not break it (it raised a dtype mismatch in addmv), and it agrees with the ghost path on it."""
    import torch

    from sample_effect.data.examples import TokenizedExample
    from sample_effect.engine.effects import compute_effects
    from sample_effect.models.loading import select_parameters
    from sample_effect.targets.core import TargetVector

    model, _ = load_model(model_dirs["qwen2"], "bfloat16")
    params = select_parameters(model)
    gen = torch.Generator().manual_seed(0)
    vocab = int(model.config.vocab_size)
    exs = [TokenizedExample(f"e{i}", [torch.randint(0, vocab, (12,), generator=gen)], [4]) for i in range(3)]
    tv = TargetVector({n: torch.randn(p.shape, generator=gen).to(torch.bfloat16) for n, p in params.items()}, "bf16")
    res = {m: compute_effects(model, params, exs, tv, UpdateConfig(opt, clip=1.0),
                              compute=ComputeConfig(method=m, progress=False)).effect for m in ("vmap", "auto")}
    # `auto` is the ghost path here (its self-check passes in bfloat16); the two paths round differently
    # (vmap: bfloat16 autograd gradients; ghost: float32 sums of bfloat16 factors), so they agree to the
    # documented bfloat16 tolerance, not to float32 rounding
    assert all(not failed for failed in ghost_plans(model).results(model).values())
    np.testing.assert_allclose(res["vmap"], res["auto"], rtol=0, atol=TOLERANCE["bfloat16"] * np.abs(res["auto"]).max())
