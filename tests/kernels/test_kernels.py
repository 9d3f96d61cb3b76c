"""Fast kernels against the vmap reference and the float64 oracle (tests/engine/test_oracle.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import ARCHS, TRAIN

from sample_effect import ComputeConfig, SampleEffectError, UpdateConfig, load_model
from sample_effect.data.examples import examples_from_records, tokenize_examples
from sample_effect.engine.vectors import TargetVector
from sample_effect.models.loading import select_parameters
from sample_effect.scoring.effects import compute_effects


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

    from sample_effect.cli.main import main

    base = ["rank", "--model", str(model_dirs["qwen2"]), "--data", str(data_files["train"]), "--target-data",
            str(data_files["target"]), "--dtype", "float64", "--quiet"]
    assert main([*base, "--out", str(tmp_path / "v.csv")]) == 0
    assert main([*base, "--out", str(tmp_path / "j.csv"), "--method", "jvp"]) == 0
    v, j = pd.read_csv(tmp_path / "v.csv"), pd.read_csv(tmp_path / "j.csv")
    assert list(v["id"]) == list(j["id"])
    np.testing.assert_allclose(j["effect"], v["effect"], rtol=1e-9)
    assert main([*base, "--out", str(tmp_path / "x.csv"), "--method", "jvp", "--clip", "1"]) == 2


def _random_state(params, seed=1):
    from sample_effect.update.optim import OptimizerState
    from sample_effect.update.rules import ParamState

    gen = torch.Generator().manual_seed(seed)
    st = OptimizerState()
    for n, p in params.items():
        exp_avg = 1e-3 * torch.randn(p.shape, generator=gen, dtype=p.dtype)
        exp_avg_sq = 1e-6 * torch.rand(p.shape, generator=gen, dtype=p.dtype)
        st.params[n] = ParamState(3.0, {"exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq})
    return st


GHOST_UPDATES = [
    (UpdateConfig("sgd"), False),
    (UpdateConfig("sgd", weight_decay=0.05, clip=0.5), False),
    (UpdateConfig("adamw"), False),
    (UpdateConfig("adam", weight_decay=0.01, clip=0.3), False),
    (UpdateConfig("adamw", beta1=0.8, beta2=0.95, clip=0.4), True),
]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("subset", [None, r"\.(attn|self_attn)\.", r"norm|ln_|wpe|embed"])
def test_ghost_equals_vmap_reference(model_dirs, arch, subset):
    """Every update x both norm forms x two memory plans: the ghost path equals vmap to float64 rounding.

    TRAIN has examples of different lengths (padding) and one with two responses; batch_size 2
    splits the set into several chunks."""
    model, tok = load_model(model_dirs[arch], "float64")
    params = select_parameters(model, subset)
    exs, _ = tokenize_examples(examples_from_records(list(enumerate(TRAIN, 1))), tok)
    gen = torch.Generator().manual_seed(0)
    G = TargetVector({n: torch.randn(p.shape, generator=gen, dtype=torch.float64) for n, p in params.items()}, "t")
    for upd, with_state in GHOST_UPDATES:
        state = _random_state(params) if with_state else None
        ref = compute_effects(model, params, exs, G, upd, state, ComputeConfig(batch_size=2, progress=False, method="vmap"))
        for norm, budget in [("gram", None), ("materialise", "2MB"), ("auto", "4GB")]:
            compute = ComputeConfig(batch_size=2, memory_budget=budget, progress=False, method="ghost", norm_method=norm,
                                    grad_norms=True)
            fast = compute_effects(model, params, exs, G, upd, state, compute)
            scale = np.abs(ref.effect).max()
            np.testing.assert_allclose(fast.effect, ref.effect, rtol=1e-9, atol=1e-12 * scale, err_msg=f"{upd} {norm}")
            np.testing.assert_allclose(fast.grad_norm, ref.grad_norm, rtol=1e-9)
            np.testing.assert_allclose(fast.loss, ref.loss, rtol=1e-12)


def test_ghost_without_grad_norms_leaves_them_empty_for_plain_sgd(model_dirs):
    model, tok = load_model(model_dirs["gpt2"], "float64")
    params = select_parameters(model)
    exs, _ = tokenize_examples(examples_from_records(list(enumerate(TRAIN, 1))), tok)
    G = TargetVector({n: torch.ones_like(p) for n, p in params.items()}, "t")
    res = compute_effects(model, params, exs, G, UpdateConfig("sgd"), compute=ComputeConfig(progress=False))
    assert np.isnan(res.grad_norm).all() and np.isfinite(res.effect).all()
    res = compute_effects(model, params, exs, G, UpdateConfig("adamw"), compute=ComputeConfig(progress=False))
    assert np.isfinite(res.grad_norm).all()  # Adam forms the gradients, so the norms come for free


class _Gate(torch.nn.Module):
    """A module the ghost rules do not know: y = x * sigmoid(gate)."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.gate = torch.nn.Parameter(torch.linspace(-1, 1, d, dtype=torch.float64))

    def forward(self, x):  # type: ignore[no-untyped-def]
        return x * torch.sigmoid(self.gate)


def test_ghost_uses_vmap_for_parameters_of_unknown_modules(model_dirs):
    from sample_effect.engine.core import ghost_coverage

    model, tok = load_model(model_dirs["llama"], "float64")
    mlp = model.model.layers[0].mlp
    mlp.down_proj = torch.nn.Sequential(mlp.down_proj, _Gate(mlp.down_proj.out_features))
    params = select_parameters(model)
    _coverage, uncovered, _ = ghost_coverage(model, params)
    assert uncovered == ["model.layers.0.mlp.down_proj.1.gate"]
    exs, _ = tokenize_examples(examples_from_records(list(enumerate(TRAIN, 1))), tok)
    gen = torch.Generator().manual_seed(0)
    G = TargetVector({n: torch.randn(p.shape, generator=gen, dtype=torch.float64) for n, p in params.items()}, "t")
    for upd in (UpdateConfig("sgd", clip=0.5), UpdateConfig("adamw")):
        ref = compute_effects(model, params, exs, G, upd, compute=ComputeConfig(batch_size=2, progress=False, method="vmap"))
        fast = compute_effects(model, params, exs, G, upd, compute=ComputeConfig(batch_size=2, progress=False))
        np.testing.assert_allclose(fast.effect, ref.effect, rtol=1e-9)


def test_ghost_self_check_catches_a_weight_used_behind_the_hooks(model_dirs):
    """A Linear whose forward uses its weight in an unforeseen way: the factor rule would be wrong,
    the once-per-model comparison with autograd notices and that parameter goes to vmap."""
    import types

    from sample_effect.engine.core import ghost_plans

    model, tok = load_model(model_dirs["qwen2"], "float64")
    lin = model.model.layers[1].mlp.up_proj

    def doubled(self, x):  # type: ignore[no-untyped-def]
        return torch.nn.functional.linear(x, self.weight) * 1.5 + torch.nn.functional.linear(x * x, self.weight) * 0.1

    lin.forward = types.MethodType(doubled, lin)
    params = select_parameters(model)
    exs, _ = tokenize_examples(examples_from_records(list(enumerate(TRAIN, 1))), tok)
    gen = torch.Generator().manual_seed(0)
    G = TargetVector({n: torch.randn(p.shape, generator=gen, dtype=torch.float64) for n, p in params.items()}, "t")
    ref = compute_effects(model, params, exs, G, UpdateConfig("sgd"), compute=ComputeConfig(progress=False, method="vmap"))
    fast = compute_effects(model, params, exs, G, UpdateConfig("sgd"), compute=ComputeConfig(batch_size=2, progress=False))
    np.testing.assert_allclose(fast.effect, ref.effect, rtol=1e-9)
    assert next(iter(ghost_plans(model).results(model).values())) == {"model.layers.1.mlp.up_proj.weight"}


def test_rank_explain_prints_the_plan_and_writes_nothing(model_dirs, data_files, tmp_path, capsys):
    from sample_effect.cli.main import main

    out = tmp_path / "r.csv"
    args = ["rank", "--model", str(model_dirs["gpt2"]), "--data", str(data_files["train"]), "--target", "self",
            "--out", str(out), "--clip", "1", "--optimizer", "adamw", "--explain", "--quiet"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "expected peak memory" in text and "transformer.wte.weight" in text and "embed+outer" in text
    assert not out.exists()
