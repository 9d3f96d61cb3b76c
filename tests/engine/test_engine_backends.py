"""The engine's backends behind one interface, the ghost plan that carries the self-check result,
and `requires_grad` restored on the caller's parameters whatever happens mid-iteration."""

from __future__ import annotations

import copy
import pickle
import types
import weakref

import numpy as np
import pytest
import torch
from conftest import TRAIN

from sample_effect import ComputeConfig, SelfTarget, UpdateConfig, load_model
from sample_effect.data.examples import examples_from_records, tokenize_examples
from sample_effect.engine import core
from sample_effect.engine.backends import (
    BatchEffects,
    EffectSettings,
    GhostBackend,
    JvpBackend,
    VmapBackend,
    backend_class,
    make_backend,
)
from sample_effect.engine.core import (
    GhostPlan,
    PlanCache,
    ghost_coverage,
    ghost_plans,
    iter_example_factors,
)
from sample_effect.engine.planner import make_plan
from sample_effect.engine.vectors import TargetVector
from sample_effect.errors import SampleEffectError
from sample_effect.models.loading import select_parameters
from sample_effect.objectives.base import SFTObjective
from sample_effect.scoring.effects import compute_effects, score_examples_result

CASES = [
    ("gpt2", UpdateConfig("sgd", clip=0.5), "ghost", False, GhostBackend),
    ("qwen2", UpdateConfig("adamw"), "ghost", False, GhostBackend),
    ("llama", UpdateConfig("sgd"), "auto", True, GhostBackend),
    ("llama", UpdateConfig("lion", clip=1.0), "ghost", False, GhostBackend),
    ("gpt2", UpdateConfig("adamw", clip=1.0), "vmap", False, VmapBackend),
    ("qwen2", UpdateConfig("sgd", weight_decay=0.1), "jvp", False, JvpBackend),
]


def _examples(tok):  # type: ignore[no-untyped-def]
    exs, _ = tokenize_examples(examples_from_records(list(enumerate(TRAIN, 1))), tok)
    return exs


def _random_target(params) -> TargetVector:  # type: ignore[no-untyped-def]
    gen = torch.Generator().manual_seed(0)
    return TargetVector({n: torch.randn(p.shape, generator=gen, dtype=torch.float64) for n, p in params.items()}, "t")


@pytest.mark.parametrize(("arch", "update", "method", "grad_norms", "cls"), CASES)
def test_backend_returns_typed_batches_equal_to_the_public_scores(model_dirs, arch, update, method, grad_norms, cls):
    model, tok = load_model(model_dirs[arch], "float64")
    exs = _examples(tok)
    compute = ComputeConfig(batch_size=2, progress=False, method=method, grad_norms=grad_norms)
    want = score_examples_result(model, tok, exs, SelfTarget(), update, compute=compute)
    params = select_parameters(model)
    # a fresh cache, so this run makes the same first-batch self-check as the public call did
    settings = EffectSettings.build(params, want.target, update, compute=compute, plans=PlanCache())
    backend = make_backend(model, params, settings)
    assert type(backend) is cls and backend_class(method) is cls
    effect, loss, gnorm = (np.full(len(exs), np.nan) for _ in range(3))
    seen: list[int] = []
    for out in backend.effects(exs):
        assert isinstance(out, BatchEffects)
        assert out.effect.dtype == np.float64 and out.effect.shape == out.loss.shape == (len(out.indices),)
        seen += out.indices
        effect[out.indices], loss[out.indices] = out.effect, out.loss
        if out.grad_norm is not None:
            gnorm[out.indices] = out.grad_norm
    assert seen == list(range(len(exs)))
    assert np.array_equal(effect, want.effect) and np.array_equal(loss, want.loss)
    assert np.array_equal(gnorm, want.grad_norm, equal_nan=True)
    assert torch.equal(torch.from_numpy(effect), torch.from_numpy(want.effect))
    assert np.isnan(gnorm).all() == (cls is JvpBackend or (update.rule.is_linear and update.clip is None and not grad_norms))


def test_run_on_one_batch_matches_the_batch_of_the_full_result(model_dirs):
    model, tok = load_model(model_dirs["gpt2"], "float64")
    exs, params = _examples(tok), select_parameters(model)
    G, update = _random_target(params), UpdateConfig("adam", clip=0.3)
    compute = ComputeConfig(batch_size=3, progress=False)
    full = compute_effects(model, params, exs, G, update, compute=compute)
    backend = GhostBackend(model, params, EffectSettings.build(params, G, update, compute=compute))
    batch = next(iter(backend.batches(exs)))
    out = backend.run(batch)
    assert out.indices == batch.indices
    assert np.array_equal(out.effect, full.effect[out.indices]) and np.array_equal(out.grad_norm, full.grad_norm[out.indices])


def test_settings_are_frozen_and_backend_errors_are_kept(model_dirs):
    model, _tok = load_model(model_dirs["llama"], "float64")
    params = select_parameters(model)
    settings = EffectSettings.build(params, _random_target(params), UpdateConfig("sgd", clip=1.0))
    with pytest.raises(AttributeError):
        settings.update = UpdateConfig()  # type: ignore[misc]
    with pytest.raises(SampleEffectError, match="jvp method computes SGD effects without clipping"):
        JvpBackend(model, params, settings)
    with pytest.raises(SampleEffectError, match="unknown engine method 'fast'"):
        backend_class("fast")


def test_the_plan_carries_the_self_check_result_and_the_check_runs_once(model_dirs, monkeypatch):
    model, tok = load_model(model_dirs["qwen2"], "float64")
    exs, params = _examples(tok), select_parameters(model)
    calls = []
    real = core.verify_factors
    monkeypatch.setattr(core, "verify_factors", lambda *a: calls.append(1) or real(*a))
    before = make_plan(model, params, exs, UpdateConfig("sgd"), ComputeConfig(progress=False))
    assert isinstance(before.ghost, GhostPlan) and before.ghost.needs_check and before.ghost.failed is None
    G = _random_target(params)
    for _ in range(2):
        compute_effects(model, params, exs, G, UpdateConfig("sgd"), compute=ComputeConfig(batch_size=2, progress=False))
    assert len(calls) == 1
    after = make_plan(model, params, exs, UpdateConfig("sgd"), ComputeConfig(progress=False))
    assert after.ghost is not None and after.ghost.failed == frozenset() and not after.ghost.needs_check
    assert ghost_plans(model).results(model) == {after.ghost.key: frozenset()}
    assert ghost_coverage(model, params)[2] is None
    # vmap and jvp plans have no ghost part
    assert make_plan(model, params, exs, UpdateConfig("sgd"), ComputeConfig(method="vmap")).ghost is None
    # a copied or pickled model is a new model: its cache starts empty and it is checked again
    twin = copy.deepcopy(model)
    assert ghost_plans(twin).results(twin) == {} and ghost_plans(twin) is not ghost_plans(model)
    assert pickle.loads(pickle.dumps(ghost_plans(model))).results(model) == {}
    compute_effects(twin, select_parameters(twin), exs, G, UpdateConfig("sgd"), compute=ComputeConfig(progress=False))
    assert len(calls) == 2


def test_a_caller_owned_cache_keeps_the_failed_parameters_and_they_go_to_vmap(model_dirs):
    model, tok = load_model(model_dirs["qwen2"], "float64")
    lin = model.model.layers[1].mlp.up_proj
    bad = "model.layers.1.mlp.up_proj.weight"

    def doubled(self, x):  # type: ignore[no-untyped-def]
        return torch.nn.functional.linear(x, self.weight) * 1.5 + torch.nn.functional.linear(x * x, self.weight) * 0.1

    lin.forward = types.MethodType(doubled, lin)
    exs, params = _examples(tok), select_parameters(model)
    G = _random_target(params)
    cache = PlanCache()
    ref = compute_effects(model, params, exs, G, UpdateConfig("sgd"), compute=ComputeConfig(progress=False, method="vmap"))
    got = compute_effects(model, params, exs, G, UpdateConfig("sgd"), compute=ComputeConfig(batch_size=2, progress=False),
                          plans=cache)
    np.testing.assert_allclose(got.effect, ref.effect, rtol=1e-9)
    assert ghost_plans(model).results(model) == {}  # the model's own cache was not used
    plan = make_plan(model, params, exs, UpdateConfig("sgd"), ComputeConfig(progress=False), plans=cache)
    assert plan.ghost is not None and plan.ghost.failed == {bad} and bad in plan.ghost.uncovered
    assert [lp.uses for lp in plan.layers if lp.name == bad] == [["vmap"]]
    assert list(cache.results(model).values()) == [frozenset({bad})]


def test_no_module_level_mutable_cache_in_the_engine():
    for value in vars(core).values():
        assert not isinstance(value, (weakref.WeakKeyDictionary, weakref.WeakValueDictionary))


class _FailingSFT(SFTObjective):
    """SFT whose loss raises on its `fail_at`-th call: an error in the middle of a ghost capture."""

    def __init__(self, fail_at: int) -> None:
        self.calls = 0
        self.fail_at = fail_at

    def sequence_loss(self, logits, input_ids, label_mask):  # type: ignore[no-untyped-def]
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("boom")
        return super().sequence_loss(logits, input_ids, label_mask)


def _half_frozen(model_dirs):  # type: ignore[no-untyped-def]
    model, tok = load_model(model_dirs["llama"], "float64")
    params = dict(model.named_parameters())
    for i, p in enumerate(params.values()):
        p.requires_grad_(i % 2 == 0)
    return model, tok, params, {n: p.requires_grad for n, p in params.items()}


@pytest.mark.parametrize("fail_at", [1, 2])
def test_requires_grad_is_restored_after_an_error_mid_iteration(model_dirs, fail_at):
    model, tok, params, flags = _half_frozen(model_dirs)
    it = iter_example_factors(model, params, _examples(tok), ComputeConfig(batch_size=2, progress=False),
                              objective=_FailingSFT(fail_at))
    with pytest.raises(RuntimeError, match="boom"):
        for _ in it:
            assert {n: p.requires_grad for n, p in params.items()} == flags  # also between batches
    assert {n: p.requires_grad for n, p in params.items()} == flags


def test_requires_grad_is_restored_when_the_consumer_stops_early(model_dirs):
    model, tok, params, flags = _half_frozen(model_dirs)
    it = iter_example_factors(model, params, _examples(tok), ComputeConfig(batch_size=2, progress=False))
    next(it)
    with pytest.raises(ValueError):
        it.throw(ValueError("consumer gave up"))
    assert {n: p.requires_grad for n, p in params.items()} == flags


@pytest.mark.parametrize("per_sequence", [core.bytes_per_sequence, core.activation_bytes_per_sequence])
def test_the_memory_budget_counts_the_weights(model_dirs, per_sequence):
    """The chunk is what fits next to the weights: (budget - weights) // per sequence; a budget that
    holds one sequence but not the weights as well is an error naming both."""
    model, _ = load_model(model_dirs["qwen2"], "float64")
    params = select_parameters(model)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    seq = per_sequence(model, params, 16)
    for n in (1, 3):
        budget = weights + n * seq + seq // 2
        got = core.plan_chunk(model, params, 16, ComputeConfig(batch_size=8, memory_budget=budget), per_sequence)
        assert got == n
    with pytest.raises(SampleEffectError, match=r"too small for one example.*of weights"):
        core.plan_chunk(model, params, 16, ComputeConfig(batch_size=8, memory_budget=weights + seq - 1), per_sequence)


def test_the_planner_refuses_an_unknown_method(model_dirs):
    """An unknown ComputeConfig.method is an error naming the choices, not a silent ghost plan."""
    model, tok = load_model(model_dirs["qwen2"], "float64")
    exs, params = _examples(tok), select_parameters(model)
    with pytest.raises(SampleEffectError, match="unknown engine method 'fast'; choose auto, ghost, vmap or jvp"):
        make_plan(model, params, exs, UpdateConfig("sgd"), ComputeConfig(method="fast", progress=False))


def test_a_fresh_sft_objective_takes_the_same_path_as_the_module_sft(model_dirs):
    """Every SFTObjective instance gives bit-identical effects, target gradients and losses to `SFT`.

    Examples with three responses (weights 1/3) make the mean-over-responses and the weighted-sum
    forms round differently, so a path chosen by object identity would show."""
    from sample_effect.engine.core import example_loss_values, mean_loss_gradient
    from sample_effect.objectives.base import SFT

    model, tok = load_model(model_dirs["qwen2"], "float64")
    records = [(i, {**r, "id": f"x{i // 3}"}) for i, r in enumerate(TRAIN[:1] * 3 + TRAIN[1:2] * 3 + TRAIN[4:5] * 3)]
    records = [(i, {**r, "response": r["response"] + " knave" * (i % 3)}) for i, r in records]
    exs, _ = tokenize_examples(examples_from_records(records), tok)
    assert [e.n_responses for e in exs] == [3, 3, 3]
    params = select_parameters(model)
    G, fresh = _random_target(params), SFTObjective()
    compute = ComputeConfig(batch_size=4, progress=False)
    for method, update in (("jvp", UpdateConfig("sgd")), ("ghost", UpdateConfig("adamw", clip=1.0)),
                           ("vmap", UpdateConfig("sgd", clip=0.5))):
        c = ComputeConfig(batch_size=4, progress=False, method=method)
        a = compute_effects(model, params, exs, G, update, compute=c, objective=SFT)
        b = compute_effects(model, params, exs, G, update, compute=c, objective=fresh)
        assert np.array_equal(a.effect, b.effect) and np.array_equal(a.loss, b.loss), method
    ga, la = mean_loss_gradient(model, params, exs, compute, objective=SFT)
    gb, lb = mean_loss_gradient(model, params, exs, compute, objective=fresh)
    assert la == lb and all(torch.equal(ga[n], gb[n]) for n in ga)
    assert torch.equal(example_loss_values(model, exs, objective=SFT), example_loss_values(model, exs, objective=fresh))
