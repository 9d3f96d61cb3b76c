"""The update-rule registry, and Lion (the rule torch lacks) against a hand-written float64 oracle.

The Lion oracle follows tests/engine/test_oracle.py: per example, `loss.backward()` one example at a
time (`oracle_grads`), then on a copy of the model `clip_grad_norm_` and the Lion formula written
out by hand, theta <- theta (1 - lr wd) - lr sign(beta1 m + (1 - beta1) g); the effect is
(theta_after - theta_before) / lr dotted with G. It shares no code with the engine's rule.
"""

from __future__ import annotations

import copy
import itertools
import re

import numpy as np
import pytest
import torch
from conftest import TARGET, TRAIN
from test_oracle import (  # noqa: F401  (setup: fixture)
    LR,
    SUBSET,
    TOL,
    dot,
    groups,
    oracle_grads,
    oracle_loss,
    oracle_step,
    ordered_names,
    setup,
)

from sample_effect import (
    ComputeConfig,
    DirectionTarget,
    LossTarget,
    SampleEffectError,
    SelfTarget,
    UpdateConfig,
    load_examples,
    load_model,
)
from sample_effect.data.examples import tokenize_examples
from sample_effect.scoring.effects import score_examples_result
from sample_effect.update import rules
from sample_effect.update.lion import LionOptimizer
from sample_effect.update.optim import OptimizerState
from sample_effect.update.rules import (
    ParamHyper,
    ParamState,
    UpdateRule,
    get_update_rule,
    update_rules,
)

B1, B2 = 0.9, 0.99  # Lion's defaults (Chen et al. 2023)


def lion_oracle_step(model, names, grads, m, clip, wd):
    """(theta_after - theta_before) / lr for one hand-written Lion step on `grads` from moments `m`."""
    c = copy.deepcopy(model)
    named = dict(c.named_parameters())
    for n in names:
        named[n].grad = grads[n].clone()
    if clip is not None:
        torch.nn.utils.clip_grad_norm_([named[n] for n in names], clip)
    before = {n: named[n].detach().clone() for n in names}
    with torch.no_grad():
        for n in names:
            p = named[n]
            m0 = m[n] if m is not None else torch.zeros_like(p)
            update = torch.sign(B1 * m0 + (1 - B1) * p.grad)
            p.mul_(1 - LR * wd)
            p.add_(update, alpha=-LR)
    return {n: (named[n].detach() - before[n]) / LR for n in names}


def _moments(fx, names):
    """A realistic Lion moment per parameter: the exp_avg of the AdamW state saved by the `setup` fixture."""
    trained = fx["trained"]
    order = ordered_names(trained, [n for n, p in trained.named_parameters() if p.requires_grad])
    state = fx["state_dict"]["state"]
    return {n: state[order.index(n)]["exp_avg"].clone() for n in names}


# Parameters whose gradient is mathematically zero (GPT-2's key bias inside c_attn.bias: softmax
# ignores a constant shift of the logits) have a rounding-noise gradient whose sign Lion turns
# into a full step, so engine and oracle differ by 2 on those coordinates (a 4e-2 relative error
# toward the direction target, whose G is not zero there). Score the weights, where every
# gradient is real.
WEIGHTS = r"weight$"
SUBSET_WEIGHTS = SUBSET + r".*weight$"


@pytest.mark.parametrize("method", ["ghost", "vmap"])
@pytest.mark.parametrize("params", [WEIGHTS, SUBSET_WEIGHTS], ids=["weights", "subset"])
def test_lion_effects_match_a_hand_written_oracle(setup, params, method):  # noqa: F811
    tok = setup["tok"]
    model = setup["trained"]
    train = load_examples(setup["files"]["train"])
    target_ex, _ = tokenize_examples(load_examples(setup["files"]["target"]), tok)
    compute = ComputeConfig(batch_size=2, progress=False, method=method)
    names = [n for n, p in model.named_parameters() if p.requires_grad and re.search(params, n)]
    g_train = oracle_grads(model, tok, TRAIN, names)
    g_target = oracle_grads(model, tok, TARGET, names)
    norms = sorted(dot(g, g) ** 0.5 for g in g_train)
    base_d = dict(setup["base"].named_parameters())
    final_d = dict(load_model(setup["final_dir"], "float64")[0].named_parameters())
    targets = {
        "data": (LossTarget(target_ex), {n: -sum(g[n] for g in g_target) / len(g_target) for n in names}),
        "self": (SelfTarget(), {n: -sum(g[n] for g in g_train) / len(g_train) for n in names}),
        "direction": (DirectionTarget(setup["base_dir"], setup["final_dir"]),
                      {n: (final_d[n] - base_d[n]).detach() for n in names}),
    }
    moments = _moments(setup, names)
    worst = {}
    cases = itertools.product([None, norms[len(norms) // 2]], [0.0, 0.1], [False, True], targets.items())
    for clip, wd, with_state, (tname, (target, G)) in cases:
        m = moments if with_state else None
        expected = torch.tensor([dot(lion_oracle_step(model, names, g, m, clip, wd), G) for g in g_train], dtype=torch.float64)
        state = OptimizerState({n: ParamState(0.0, {"exp_avg": t.clone()}) for n, t in moments.items()}) if with_state else None
        res = score_examples_result(
            model, tok, train, target, UpdateConfig("lion", lr=LR, clip=clip, weight_decay=wd), params=params,
            optimizer_state=state, compute=compute,
        )
        got = torch.tensor(res.effect, dtype=torch.float64)
        worst[(clip is not None, wd, with_state, tname)] = ((got - expected).abs().max() / expected.abs().max()).item()
    print(f"lion {setup['arch']}/{method}/{params}: worst relative error {max(worst.values()):.2e} over {len(worst)} cases")
    bad = {k: v for k, v in worst.items() if not v <= TOL}
    assert not bad, f"{setup['arch']}: relative errors above {TOL}: {bad}"


LION_BETAS = (0.85, 0.98)  # not the defaults: they must come from the saved state's groups


def _lion_trained(fx, workdir):
    """The base model after 3 real `LionOptimizer` steps (two groups, non-default betas) and its saved state file."""
    trained = copy.deepcopy(fx["base"]).eval()
    names_all = [n for n, p in trained.named_parameters() if p.requires_grad]
    opt = LionOptimizer(groups(trained, names_all), lr=1e-3, betas=LION_BETAS)
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):
        pick = torch.randint(len(TRAIN), (2,), generator=gen).tolist()
        opt.zero_grad()
        sum(oracle_loss(trained, fx["tok"], [(TRAIN[i]["prompt"], TRAIN[i]["response"])]) for i in pick).backward()
        opt.step()
    opt.zero_grad()
    path = workdir / f"lion-state-{fx['arch']}.pt"
    torch.save({"optimizer": opt.state_dict(), "param_names": ordered_names(trained, names_all)}, path)
    return trained, names_all, opt.state_dict(), path


def test_saved_lion_state_loads_and_scores_as_the_real_optimizer_steps(setup, workdir):  # noqa: F811
    """A real LionOptimizer's saved `--optimizer-state` file loads, and its effects equal a float64 oracle.

    The oracle: per-example `loss.backward()` and the real `LionOptimizer` step, from the saved
    state, on a copy of the model.
    """
    tok = setup["tok"]
    model, names_all, sd, path = _lion_trained(setup, workdir)
    train = load_examples(setup["files"]["train"])
    target_ex, _ = tokenize_examples(load_examples(setup["files"]["target"]), tok)
    names = [n for n in names_all if re.search(WEIGHTS, n)]

    def make_opt(m, ns):
        return LionOptimizer(groups(m, ns), lr=LR, betas=LION_BETAS)

    full = copy.deepcopy(model)
    big = make_opt(full, names_all)
    big.load_state_dict(sd)
    small = make_opt(full, names)
    for p_small in [p for g in small.param_groups for p in g["params"]]:
        small.state[p_small] = copy.deepcopy(big.state[p_small])
    state = small.state_dict()
    assert all(set(v) == {"step", "exp_avg"} for v in state["state"].values()) and state["state"]

    g_train = oracle_grads(model, tok, TRAIN, names)
    g_target = oracle_grads(model, tok, TARGET, names)
    norms = sorted(dot(g, g) ** 0.5 for g in g_train)
    targets = {
        "data": (LossTarget(target_ex), {n: -sum(g[n] for g in g_target) / len(g_target) for n in names}),
        "self": (SelfTarget(), {n: -sum(g[n] for g in g_train) / len(g_train) for n in names}),
    }
    worst = {}
    for clip, (tname, (target, G)) in itertools.product([None, norms[len(norms) // 2]], targets.items()):
        expected = torch.tensor([dot(oracle_step(model, names, g, make_opt, state, clip), G) for g in g_train],
                                dtype=torch.float64)
        res = score_examples_result(
            model, tok, train, target, UpdateConfig("lion", lr=LR, clip=clip), params=WEIGHTS,
            optimizer_state=path, compute=ComputeConfig(batch_size=2, progress=False),
        )
        got = torch.tensor(res.effect, dtype=torch.float64)
        worst[(clip is not None, tname)] = ((got - expected).abs().max() / expected.abs().max()).item()
    bad = {k: v for k, v in worst.items() if not v <= TOL}
    assert not bad, f"{setup['arch']}: relative errors above {TOL}: {bad}"


def test_a_state_loads_as_its_rules_state(setup, workdir):  # noqa: F811
    """Loading reads the rule's own state tensors; another rule's state is refused by name, not misread."""
    from sample_effect.update.optim import load_optimizer_state

    model, names_all, _, path = _lion_trained(setup, workdir)
    params = {n: p for n, p in model.named_parameters() if n in names_all}
    st = load_optimizer_state(path, params, torch.float64, rule=get_update_rule("lion"))
    assert set(st.tensors("exp_avg")) == set(names_all) and st.tensors("exp_avg_sq") == {}
    assert set(st.steps.values()) == {3.0}
    inferred = load_optimizer_state(path, params, torch.float64)  # no rule: the registered rule that fits
    assert all(torch.equal(inferred.tensors("exp_avg")[n], st.tensors("exp_avg")[n]) for n in names_all)
    with pytest.raises(SampleEffectError, match=r"has no exp_avg_sq \(not a state of the 'adamw' optimizer"):
        load_optimizer_state(path, params, torch.float64, rule=get_update_rule("adamw"))
    with pytest.raises(SampleEffectError, match=r"has no exp_avg_sq \(not a state of the 'adam' optimizer"):
        score_examples_result(model, setup["tok"], load_examples(setup["files"]["train"]), SelfTarget(),
                              UpdateConfig("adam"), optimizer_state=path, compute=ComputeConfig(progress=False))


def test_unknown_optimizer_fails_clearly_listing_the_registered_rules():
    names = list(update_rules())
    assert {"sgd", "adam", "adamw", "lion"} <= set(names)
    for bad in ("nadam", "", "ADAMW", None):
        with pytest.raises(SampleEffectError, match=r"unknown optimizer .*; choose one of " + re.escape(", ".join(names))):
            get_update_rule(bad)  # type: ignore[arg-type]
    with pytest.raises(SampleEffectError, match=r"unknown optimizer .nadam.; choose one of .*lion"):
        UpdateConfig("nadam").validate()
    with pytest.raises(SampleEffectError, match="unknown optimizer 'nadam'"):
        _ = UpdateConfig("nadam").rule


def test_rules_describe_themselves():
    assert [n for n, r in update_rules().items() if r.is_linear] == ["sgd"]
    assert {n for n, r in update_rules().items() if r.needs_state} == {"adam", "adamw", "lion"}
    assert UpdateConfig("adamw").rule is get_update_rule("adamw")
    assert OptimizerState().hyper("w", UpdateConfig("adamw")).weight_decay == 0.01  # torch's defaults, per rule
    assert OptimizerState().hyper("w", UpdateConfig("lion")).beta2 == 0.99
    assert OptimizerState().hyper("w", UpdateConfig("adam")).beta2 == 0.999


def test_a_rule_registers_itself_and_serves_every_engine_path(setup):  # noqa: F811
    """A new optimiser is one subclass: the engine's ghost and vmap paths take it with no other change."""

    class HalfSGD(UpdateRule, name="test-half-sgd"):
        """d = -g / 2."""

        def step_with_state(self, grad, param, hyper, state=None):
            return -0.5 * grad, state

    try:
        with pytest.raises(SampleEffectError, match="registered twice"):
            type("Again", (UpdateRule,), {}, name="test-half-sgd")
        train = load_examples(setup["files"]["train"])
        kw = {"target": SelfTarget(), "params": SUBSET}
        for method in ("ghost", "vmap"):
            compute = ComputeConfig(batch_size=2, progress=False, method=method)
            half = score_examples_result(setup["base"], setup["tok"], train, update=UpdateConfig("test-half-sgd"),
                                         compute=compute, **kw).effect
            sgd = score_examples_result(setup["base"], setup["tok"], train, update=UpdateConfig("sgd"),
                                        compute=compute, **kw).effect
            np.testing.assert_allclose(half, 0.5 * sgd, rtol=1e-12)
    finally:
        rules._REGISTRY.pop("test-half-sgd", None)
    assert "test-half-sgd" not in update_rules()


def test_lion_optimizer_takes_the_rules_steps_and_is_recognised():
    from sample_effect.integrations.trl import optimizer_kind

    gen = torch.Generator().manual_seed(0)
    w = torch.nn.Parameter(torch.randn(5, 3, generator=gen, dtype=torch.float64))
    opt = LionOptimizer([w], lr=0.1, weight_decay=0.2)
    theta, m = w.detach().clone(), torch.zeros_like(w)
    for _ in range(3):
        g = torch.randn(5, 3, generator=gen, dtype=torch.float64)
        w.grad = g.clone()
        opt.step()
        theta = theta * (1 - 0.1 * 0.2) - 0.1 * torch.sign(B1 * m + (1 - B1) * g)
        m = B2 * m + (1 - B2) * g
        torch.testing.assert_close(w.detach(), theta, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(opt.state[w]["exp_avg"], m, rtol=1e-14, atol=1e-14)
    assert optimizer_kind(opt, opt.param_groups[0]) == "lion"
    assert optimizer_kind(torch.optim.AdamW([w]), {"lr": 1e-3}) == "adamw"
    assert optimizer_kind(torch.optim.Adam([w]), {"lr": 1e-3}) == "adam"
    assert optimizer_kind(torch.optim.SGD([w], lr=1e-3), {"lr": 1e-3}) == "sgd"
    d = get_update_rule("lion").step(g.unsqueeze(0), w.detach(), ParamHyper(B1, B2, 0.0, 0.0))
    assert d.shape == (1, 5, 3) and set(d.unique().tolist()) <= {-1.0, 0.0, 1.0}
