"""Invariants of the sample effect that hold whatever the model or data."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import TRAIN
from hypothesis import given, settings
from hypothesis import strategies as st

from sample_effect import ComputeConfig, UpdateConfig, load_model
from sample_effect.data.examples import examples_from_records, tokenize_examples
from sample_effect.engine.vectors import TargetVector
from sample_effect.models.loading import select_parameters
from sample_effect.scoring.effects import compute_effects

COMPUTE = ComputeConfig(batch_size=3, progress=False)


@pytest.fixture(scope="module")
def setup(model_dirs):
    model, tok = load_model(model_dirs["gpt2"], "float64")
    params = select_parameters(model)
    exs, _ = tokenize_examples(examples_from_records(list(enumerate(TRAIN, 1))), tok)
    return model, params, exs


def random_target(params, seed):
    gen = torch.Generator().manual_seed(seed)
    return {n: torch.randn(p.shape, generator=gen, dtype=torch.float64) for n, p in params.items()}


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 1000), a=st.floats(-3, 3), b=st.floats(-3, 3), opt=st.sampled_from(["sgd", "adamw"]))
def test_effect_is_linear_in_target(setup, seed, a, b, opt):
    model, params, exs = setup
    g1, g2 = random_target(params, seed), random_target(params, seed + 1)
    mix = {n: a * g1[n] + b * g2[n] for n in params}
    cfg = UpdateConfig(opt, clip=0.5)
    e1, e2, em = (compute_effects(model, params, exs, TargetVector(g, "t"), cfg, compute=COMPUTE).effect for g in (g1, g2, mix))
    np.testing.assert_allclose(em, a * e1 + b * e2, rtol=1e-9, atol=1e-9 * (np.abs(e1).max() + np.abs(e2).max()))


def test_clipped_sgd_effect_is_bounded_by_c_times_target_norm(setup):
    model, params, exs = setup
    g = TargetVector(random_target(params, 3), "t")
    for c in (0.01, 0.3, 10.0):
        e = compute_effects(model, params, exs, g, UpdateConfig("sgd", clip=c), compute=COMPUTE).effect
        assert np.all(np.abs(e) <= c * g.norm() * (1 + 1e-12))


def test_duplicates_get_identical_effects_and_order_does_not_matter(setup, tokenizer):
    model, params, _ = setup
    rows = [*TRAIN, {**TRAIN[0], "id": "dup"}]
    exs, _ = tokenize_examples(examples_from_records(list(enumerate(rows, 1))), tokenizer)
    g = TargetVector(random_target(params, 5), "t")
    res = compute_effects(model, params, exs, g, UpdateConfig("adamw"), compute=COMPUTE)
    assert res.effect[0] == pytest.approx(res.effect[-1], rel=1e-12)
    rev = compute_effects(model, params, exs[::-1], g, UpdateConfig("adamw"), compute=ComputeConfig(batch_size=1, progress=False))
    np.testing.assert_allclose(rev.effect[::-1], res.effect, rtol=1e-10)
    a, b = res.table().set_index("id"), rev.table().set_index("id")
    np.testing.assert_allclose(b.loc[a.index, "effect"], a["effect"], rtol=1e-10)
    ties = {"t0", "dup"}  # equal effects: their order follows the input, everything else must not move
    assert [i for i in a.index if i not in ties] == [i for i in b.index if i not in ties]


def test_nonfinite_examples_are_flagged_and_ranked_last(model_dirs, tokenizer, caplog):
    from collections import Counter

    from sample_effect import SampleEffectError

    model, tok = load_model(model_dirs["llama"], "float64")  # untied embeddings
    params = select_parameters(model)
    exs, _ = tokenize_examples(examples_from_records(list(enumerate(TRAIN, 1))), tok)
    counts = Counter(t for ex in exs for s in ex.sequences for t in set(s.tolist()))
    owner = {t: ex.id for ex in exs for s in ex.sequences for t in s.tolist()}
    token = next(t for t, c in counts.items() if c == 1)
    with torch.no_grad():
        model.model.embed_tokens.weight[token] = float("nan")
    g = TargetVector(random_target(params, 1), "t")
    res = compute_effects(model, params, exs, g, UpdateConfig("sgd"), compute=COMPUTE)
    table = res.table()
    bad = table[table["flag"] == "nonfinite"]
    assert list(bad["id"]) == [owner[token]] and int(bad["rank"].iloc[0]) == len(table)
    assert "non-finite effect" in caplog.text and owner[token] in caplog.text
    nan_target = TargetVector({n: torch.full_like(v, float("nan")) for n, v in g.vector.items()}, "t")
    with pytest.raises(SampleEffectError, match="contains NaN or Inf"):
        compute_effects(model, params, exs, nan_target, UpdateConfig("sgd"), compute=COMPUTE)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 300), where=st.integers(0, 10**6), bad=st.sampled_from([float("nan"), float("inf"), -float("inf"), None]),
       dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16]))
def test_target_all_finite_equals_isfinite(n, where, bad, dtype):
    """TargetVector.all_finite (one aminmax per tensor) says what torch.isfinite(v).all() says."""
    v = torch.randn(n, dtype=torch.float64).to(dtype)
    if bad is not None:
        v[where % n] = bad
    t = TargetVector({"a": torch.ones(3), "b": v, "empty": torch.empty(0)}, "t")
    assert t.all_finite() == bool(torch.isfinite(v).all()) == (bad is None)
    assert t.all_finite(["a", "empty"])


@settings(max_examples=6, deadline=None)
@given(c=st.floats(0.1, 10.0), method=st.sampled_from(["ghost", "vmap"]))
def test_scaling_the_loss_scales_sgd_effects_and_leaves_fresh_adam_unchanged_up_to_eps(setup, c, method):
    """loss -> c * loss scales every gradient by c: SGD effects scale by c, and a fresh Adam step,
    g / (|g| + eps) up to constants, is unchanged except through eps: exactly the step with eps / c.

    (Taking eps -> 0 instead would not make the invariance exact in floating point: coordinates
    whose true gradient is 0 carry rounding noise of either sign, which eps-free Adam maps to +-1.)"""
    from sample_effect.objectives.base import SFTObjective

    class Scaled(SFTObjective):  # the SFT loss times c, given to the engine as its objective
        def sequence_loss(self, *a):
            return c * super().sequence_loss(*a)

    model, params, exs = setup
    g = TargetVector(random_target(params, 11), "t")
    compute = ComputeConfig(batch_size=3, progress=False, method=method)
    eps = 1e-8
    base_sgd = compute_effects(model, params, exs, g, UpdateConfig("sgd"), compute=compute).effect
    base_adam = compute_effects(model, params, exs, g, UpdateConfig("adamw", eps=eps / c, weight_decay=0.0), compute=compute).effect
    scaled = Scaled()
    scaled_sgd = compute_effects(model, params, exs, g, UpdateConfig("sgd"), compute=compute, objective=scaled).effect
    scaled_adam = compute_effects(model, params, exs, g, UpdateConfig("adamw", eps=eps, weight_decay=0.0), compute=compute,
                                  objective=scaled).effect
    np.testing.assert_allclose(scaled_sgd, c * base_sgd, rtol=1e-9)
    np.testing.assert_allclose(scaled_adam, base_adam, rtol=1e-6)


def test_dataset_effect_is_the_mean_of_sample_effects(setup):
    """SGD without clipping is linear: one step on the mean gradient of the set moves the target by
    the mean of the examples' effects (DESIGN: E(D) = mean over s of e(s))."""
    from sample_effect.engine.core import mean_loss_gradient

    model, params, exs = setup
    g = random_target(params, 12)
    effects = compute_effects(model, params, exs, TargetVector(g, "t"), UpdateConfig("sgd"), compute=COMPUTE).effect
    mean_grad, _ = mean_loss_gradient(model, params, exs, COMPUTE)
    dataset_effect = -sum(float((mean_grad[n] * g[n]).sum()) for n in params)
    assert dataset_effect == pytest.approx(effects.mean(), rel=1e-10)
