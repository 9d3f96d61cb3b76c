"""Lower precisions against the float64 engine on the same weights: the documented tolerances."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sample_effect import ComputeConfig, LossTarget, UpdateConfig, load_examples, load_model
from sample_effect.data.examples import tokenize_examples
from sample_effect.engine.core import ghost_plans
from sample_effect.scoring.effects import score_examples_result

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
    from sample_effect.engine.vectors import TargetVector
    from sample_effect.models.loading import select_parameters
    from sample_effect.scoring.effects import compute_effects

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


@pytest.mark.parametrize("arch", ["gpt2", "qwen2"])
def test_bfloat16_narrow_factors_track_float64_on_every_path(model_dirs, data_files, arch):
    """A bfloat16 model's Linear / Conv1D factors stay bfloat16 and their GEMMs run in it
    (ComputeConfig.gemm_dtype 'model', what 'auto' picks where bf16 GEMMs are native); 'accumulate' runs them in float32. Both stay
    within the documented bfloat16 tolerance of a float64 vmap run on the same (bf16-rounded) weights,
    for SGD, clipped SGD through either norm form, and clipped AdamW."""
    import copy

    import torch

    from sample_effect.engine.core import iter_example_factors
    from sample_effect.engine.vectors import TargetVector
    from sample_effect.models.loading import select_parameters
    from sample_effect.scoring.effects import compute_effects

    model16, tok = load_model(model_dirs[arch], "bfloat16")
    model64 = copy.deepcopy(model16).double()
    exs, _ = tokenize_examples(load_examples(data_files["train"]), tok)
    p16, p64 = select_parameters(model16), select_parameters(model64)
    gen = torch.Generator().manual_seed(1)
    g64 = {n: torch.randn(p.shape, generator=gen, dtype=torch.float64) for n, p in p64.items()}
    kinds = {}
    for gemm in ("model", "accumulate"):
        batch = next(iter(iter_example_factors(model16, p16, exs, ComputeConfig(progress=False, gemm_dtype=gemm))))
        kinds[gemm] = {(f.kind, f.b.dtype, f.gemm) for fs in batch.factors.values() for f in fs}
    linear = "outer_t" if arch == "gpt2" else "outer"
    assert (linear, torch.bfloat16, torch.bfloat16) in kinds["model"]
    assert all(g is None and d == torch.float32 for _, d, g in kinds["accumulate"])
    cases = [(UpdateConfig("sgd"), "auto"), (UpdateConfig("sgd", clip=0.5), "gram"),
             (UpdateConfig("sgd", clip=0.5), "materialise"), (UpdateConfig("adamw", clip=0.5), "auto")]
    tv = TargetVector({n: v.float() for n, v in g64.items()}, "t")
    vmap16 = {(u.optimizer, u.clip): compute_effects(model16, p16, exs, tv, u, compute=ComputeConfig(
        progress=False, method="vmap")).effect for u, _ in cases}
    for upd, norm in cases:
        ref = compute_effects(model64, p64, exs, TargetVector(g64, "t"), upd,
                              compute=ComputeConfig(progress=False, method="vmap")).effect
        for gemm in ("model", "accumulate"):
            got = compute_effects(model16, p16, exs, tv, upd, compute=ComputeConfig(
                progress=False, method="ghost", norm_method=norm, gemm_dtype=gemm, grad_norms=True)).effect
            err = np.abs(got - ref).max() / np.abs(ref).max()
            # a fresh Adam step is about sign(g): bfloat16 autograd itself (vmap on the bf16 model) is off
            # by 9-10% of max |effect| there, so the ghost paths are held to what it does
            err_autograd = np.abs(vmap16[upd.optimizer, upd.clip] - ref).max() / np.abs(ref).max()
            assert err <= max(TOLERANCE["bfloat16"], 1.25 * err_autograd), (upd, norm, gemm, err, err_autograd)


def test_unknown_gemm_dtype_names_the_field(model_dirs, data_files):
    from sample_effect.errors import ConfigError

    model, tok = load_model(model_dirs["qwen2"], "bfloat16")
    target, _ = tokenize_examples(load_examples(data_files["target"]), tok)
    with pytest.raises(ConfigError, match=r"ComputeConfig\.gemm_dtype must be 'auto', 'model' or 'accumulate', got 'fp8'"):
        score_examples_result(model, tok, load_examples(data_files["train"]), LossTarget(target), UpdateConfig("sgd"),
                              compute=ComputeConfig(progress=False, gemm_dtype="fp8"))


@pytest.mark.parametrize(("flags", "expected"), [(["avx2"], "accumulate"), (["avx2", "avx512_bf16"], "model"),
                                                 (["amx_bf16"], "model")])
def test_auto_gemm_dtype_follows_the_cpu(model_dirs, data_files, monkeypatch, caplog, flags, expected):
    """gemm_dtype 'auto' (the default) on a bf16 model: the factors and the values are exactly those of the
    setting the CPU's flags call for, the choice is logged once, and the results' key names what ran."""
    import logging

    import sample_effect.runtime.cpu as cpu
    from sample_effect.engine.core import iter_example_factors
    from sample_effect.engine.keys import settings_key
    from sample_effect.models.loading import select_parameters

    monkeypatch.setattr(cpu, "cpu_info", lambda: {"flags": flags})
    monkeypatch.setattr(cpu, "_told", set())
    model, tok = load_model(model_dirs["qwen2"], "bfloat16")
    exs, _ = tokenize_examples(load_examples(data_files["train"]), tok)
    params = select_parameters(model)

    def kinds(gemm):
        batch = next(iter(iter_example_factors(model, params, exs, ComputeConfig(progress=False, gemm_dtype=gemm))))
        return {(name, f.kind, f.b.dtype, f.gemm) for name, fs in batch.factors.items() for f in fs}

    with caplog.at_level(logging.INFO, logger="sample_effect"):
        auto = kinds("auto")
        kinds("auto")
    assert auto == kinds(expected) and auto != kinds("accumulate" if expected == "model" else "model")
    told = [r.message for r in caplog.records if "gemm_dtype auto" in r.message]
    assert len(told) == 1 and ("float32" in told[0]) == (expected == "accumulate")
    upd = UpdateConfig("sgd")
    key = {g: settings_key(model, params, exs, upd, None, ComputeConfig(gemm_dtype=g)) for g in ("auto", expected)}
    assert key["auto"] == key[expected]
    assert cpu.resolve_gemm_dtype("auto", torch.float32, "cpu") == "model"  # nothing narrow: no change
    assert cpu.resolve_gemm_dtype("auto", torch.bfloat16, "cuda") == "model"
    assert cpu.resolve_gemm_dtype("accumulate", torch.bfloat16, "cuda") == "accumulate"
