"""The per-layer rule registry: lookup by module type, the fallback for unknown modules, a new rule."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch
from conftest import TRAIN
from sample_effect.kernels import ghost
from sample_effect.kernels.layers import (
    Factor,
    LayerRule,
    UnknownKindError,
    lookup_layer_rule,
    register_layer_rule,
    rule_for_kind,
    unregister_layer_rule,
)
from sample_effect.kernels.layers.base import KIND_RULES
from sample_effect.kernels.layers.embedding import EmbeddingRule
from sample_effect.kernels.layers.linear import Conv1DRule, LinearRule
from sample_effect.kernels.layers.norm import NormRule

from sample_effect import ComputeConfig, UpdateConfig, load_model
from sample_effect.data.examples import examples_from_records, tokenize_examples
from sample_effect.engine.vectors import TargetVector
from sample_effect.models.loading import select_parameters
from sample_effect.scoring.effects import compute_effects


class _MyLinear(torch.nn.Linear):
    """A subclass: found through the MRO."""


class FancyRMSNorm(torch.nn.Module):
    """Stands in for a transformers norm class (Qwen2RMSNorm, ...): recognised by its name."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)


class _Gate(torch.nn.Module):
    """A module no rule knows: y = x * sigmoid(gate)."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.gate = torch.nn.Parameter(torch.linspace(-1, 1, d, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.gate)


def test_builtin_rules_are_found_by_type_mro_and_name():
    from transformers.pytorch_utils import Conv1D

    assert type(lookup_layer_rule(torch.nn.Linear(3, 2))) is LinearRule
    assert type(lookup_layer_rule(_MyLinear(3, 2))) is LinearRule
    assert type(lookup_layer_rule(Conv1D(2, 3))) is Conv1DRule
    assert type(lookup_layer_rule(torch.nn.Embedding(5, 2))) is EmbeddingRule
    assert type(lookup_layer_rule(torch.nn.LayerNorm(4))) is NormRule
    assert type(lookup_layer_rule(FancyRMSNorm(4))) is NormRule
    assert dict(lookup_layer_rule(torch.nn.Linear(3, 2)).param_kinds(torch.nn.Linear(3, 2))) == {"weight": "outer", "bias": "sum"}
    # a rule may still decline a module's parameters: they go to vmap
    emb = torch.nn.Embedding(5, 2, max_norm=1.0)
    assert dict(lookup_layer_rule(emb).param_kinds(emb)) == {}


def test_unregistered_modules_get_no_rule_and_fall_back_to_vmap():
    assert lookup_layer_rule(_Gate(3)) is None
    assert lookup_layer_rule(torch.nn.Conv2d(1, 1, 3)) is None
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), _Gate(3))
    coverage, uncovered = ghost.plan_coverage(model, dict(model.named_parameters()))
    assert uncovered == ["1.gate"]
    assert coverage == {"0.weight": [("0", "weight", "outer")], "0.bias": [("0", "bias", "sum")]}


def test_unknown_kinds_and_double_registration_are_clear_errors():
    with pytest.raises(UnknownKindError, match="no layer rule is registered for factor kind 'nope'"):
        rule_for_kind("nope")
    with pytest.raises(KeyError):  # the hot-path dispatchers raise the same error
        ghost.factor_dot(Factor("nope", None, torch.zeros(1, 1, 1), torch.Size([1])), torch.zeros(1))
    with pytest.raises(ValueError, match="already has the rule LinearRule"):
        register_layer_rule()(type("Again", (LinearRule,), {"kind": "outer"}))
    with pytest.raises(ValueError, match="Linear already have a layer rule"):
        register_layer_rule(torch.nn.Linear)(type("Again", (LinearRule,), {"kind": "outer_again"}))
    with pytest.raises(ValueError, match="is not registered"):
        unregister_layer_rule(type("Never", (LinearRule,), {"kind": "never"}))
    assert "outer_again" not in KIND_RULES and type(rule_for_kind("outer")) is LinearRule


class ToyScale(torch.nn.Module):
    """A new layer type: y = x * w with an elementwise weight w [d]."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.linspace(0.5, 1.5, d, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight


class ToyScaleRule(LayerRule):
    """g = sum_n B * A with A = the layer's input; Gram form <g1, g2> of the two summed vectors."""

    kind = "toy_scale"
    wrong = 1.0  # a subclass sets 2.0 to get a rule the self-check must catch

    def capture(self, module, pname, x, gy):  # type: ignore[no-untyped-def]
        return Factor(self.kind, x * self.wrong, gy, module.weight.shape)

    def dot(self, f, g):  # type: ignore[no-untyped-def]
        return (f.b * f.a).sum(1) @ g

    def materialise(self, f, rows):  # type: ignore[no-untyped-def]
        return (f.b[rows] * f.a[rows]).sum(1)

    def total(self, f):  # type: ignore[no-untyped-def]
        return (f.b * f.a).sum((0, 1))

    def gram(self, f1, f2):  # type: ignore[no-untyped-def]
        if f1.kind != self.kind or f2.kind != self.kind:
            return None
        return ((f1.b * f1.a).sum(1) * (f2.b * f2.a).sum(1)).sum(1)

    def gram_cost(self, f1, f2):  # type: ignore[no-untyped-def]
        return None if f1.kind != f2.kind else 0.0  # always choose the Gram form under 'auto'

    def meta_factor(self, module, pname, rows, slots):  # type: ignore[no-untyped-def]
        d = module.weight.shape[0]
        return Factor(self.kind, torch.empty(rows, slots, d, device="meta"), torch.empty(rows, slots, d, device="meta"),
                      module.weight.shape)


@pytest.fixture
def toy_rule() -> Iterator[type[ToyScaleRule]]:
    cls = register_layer_rule(ToyScale)(ToyScaleRule)
    try:
        yield cls
    finally:
        unregister_layer_rule(cls)
    assert lookup_layer_rule(ToyScale(2)) is None


def _toy_model(model_dirs):  # type: ignore[no-untyped-def]
    model, tok = load_model(model_dirs["llama"], "float64")
    mlp = model.model.layers[0].mlp
    mlp.down_proj = torch.nn.Sequential(mlp.down_proj, ToyScale(mlp.down_proj.out_features))
    params = select_parameters(model)
    exs, _ = tokenize_examples(examples_from_records(list(enumerate(TRAIN, 1))), tok)
    gen = torch.Generator().manual_seed(0)
    G = TargetVector({n: torch.randn(p.shape, generator=gen, dtype=torch.float64) for n, p in params.items()}, "t")
    return model, params, exs, G


TOY = "model.layers.0.mlp.down_proj.1.weight"


def test_a_registered_rule_covers_its_layer_and_matches_the_vmap_reference(model_dirs, toy_rule):
    from sample_effect.engine.core import (
        ghost_coverage,
        iter_example_factors,
        iter_example_gradients,
    )
    from sample_effect.engine.planner import make_plan

    model, params, exs, G = _toy_model(model_dirs)
    coverage, uncovered, _ = ghost_coverage(model, params)
    assert uncovered == [] and coverage[TOY] == [("model.layers.0.mlp.down_proj.1", "weight", "toy_scale")]
    # the rule's dot, materialised gradient and Gram norm against vmap's per-example gradients
    compute = ComputeConfig(batch_size=3, progress=False)
    refs = list(iter_example_gradients(model, {TOY: params[TOY]}, exs, compute))
    ref = torch.cat([b.grads[TOY] for b in refs])
    fs_all = [b.factors[TOY] for b in iter_example_factors(model, params, exs, compute)]
    dots = torch.cat([sum(ghost.factor_dot(f, G.vector[TOY]) for f in fs) for fs in fs_all])
    torch.testing.assert_close(dots, ref @ G.vector[TOY], rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(torch.cat([ghost.materialise_sum(fs) for fs in fs_all]), ref, rtol=1e-10, atol=1e-14)
    assert all(ghost.norm_method(fs) == "gram" for fs in fs_all)
    torch.testing.assert_close(torch.cat([ghost.sq_norms_gram(fs) for fs in fs_all]), ref.pow(2).sum(1), rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(torch.cat([rule_for_kind("toy_scale").sq_norms(fs[0]) for fs in fs_all]), ref.pow(2).sum(1),
                               rtol=1e-10, atol=1e-14)
    # the whole engine, and the planner's view of the new layer
    for upd in (UpdateConfig("sgd", clip=0.5), UpdateConfig("adamw")):
        want = compute_effects(model, params, exs, G, upd, compute=ComputeConfig(batch_size=2, progress=False, method="vmap"))
        got = compute_effects(model, params, exs, G, upd, compute=ComputeConfig(batch_size=2, progress=False, grad_norms=True))
        np.testing.assert_allclose(got.effect, want.effect, rtol=1e-9)
        np.testing.assert_allclose(got.grad_norm, want.grad_norm, rtol=1e-9)
    plan = make_plan(model, params, exs, UpdateConfig("sgd", clip=0.5), ComputeConfig(progress=False))
    assert [(lp.uses, lp.norm) for lp in plan.layers if lp.name == TOY] == [(["toy_scale"], "gram")]


class WrongToyRule(ToyScaleRule):
    """A rule whose capture is wrong by a factor of two."""

    kind = "toy_scale_wrong"
    wrong = 2.0


def test_a_wrong_rule_is_caught_by_the_self_check(model_dirs):
    from sample_effect.engine.core import ghost_plans

    register_layer_rule(ToyScale)(WrongToyRule)
    try:
        model, params, exs, G = _toy_model(model_dirs)
        want = compute_effects(model, params, exs, G, UpdateConfig("sgd"), compute=ComputeConfig(progress=False, method="vmap"))
        got = compute_effects(model, params, exs, G, UpdateConfig("sgd"), compute=ComputeConfig(batch_size=2, progress=False))
        np.testing.assert_allclose(got.effect, want.effect, rtol=1e-9)
        assert next(iter(ghost_plans(model).results(model).values())) == {TOY}
    finally:
        unregister_layer_rule(WrongToyRule)
