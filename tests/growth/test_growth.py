"""Noise-effect estimator against an explicit Hessian and covariance on a small parameter subset."""

from __future__ import annotations

import pytest
import torch
from conftest import TARGET, TRAIN

from sample_effect import UpdateConfig, load_model
from sample_effect.data.examples import examples_from_records, pad_sequences, tokenize_examples
from sample_effect.growth.noise import noise_effect_loss_target
from sample_effect.models.loading import select_parameters
from sample_effect.objectives.losses import sft_sequence_loss


def mean_loss(model, exs):
    total = 0
    for ex in exs:
        per = [sft_sequence_loss(model(input_ids=pad_sequences([s], [r])[0]).logits, *pad_sequences([s], [r]))[0]
               for s, r in zip(ex.sequences, ex.response_starts)]
        total = total + sum(per) / len(per)
    return total / len(exs)


@pytest.mark.parametrize(("arch", "subset", "clip"), [("gpt2", r"ln_f\.weight", None), ("qwen2", r"^model\.norm\.weight", 0.05)])
def test_trace_h_sigma_matches_explicit_matrices(model_dirs, arch, subset, clip):
    model, tok = load_model(model_dirs[arch], "float64")
    params = select_parameters(model, subset)
    ((name, p),) = params.items()
    exs, _ = tokenize_examples(examples_from_records(list(enumerate(TRAIN, 1))), tok)
    tgt, _ = tokenize_examples(examples_from_records(list(enumerate(TARGET, 1))), tok)
    est = noise_effect_loss_target(model, params, exs, tgt, UpdateConfig("sgd", clip=clip))

    # Oracle: per-example SGD updates by backward (clipped by hand), explicit covariance and Hessian.
    ds = []
    for ex in exs:
        model.zero_grad()
        mean_loss(model, [ex]).backward()
        g = p.grad.detach().flatten().clone()
        if clip is not None:
            g = g * min(1.0, clip / (g.norm().item() + 1e-6))
        ds.append(-g)
    D = torch.stack(ds)
    sigma = torch.cov(D.T)  # unbiased

    def loss_of(flat):
        return mean_loss(_Wrapped(model, name, flat.view_as(p)), tgt)

    H = torch.autograd.functional.hessian(loss_of, p.detach().clone().flatten())
    expected = -torch.trace(H @ sigma).item()
    assert abs(expected) > 1e-8  # a non-trivial case
    assert est.n == len(exs)
    assert est.trace == pytest.approx(expected, rel=1e-8, abs=1e-14)
    assert est.per_step(1e-3, 4) == pytest.approx(1e-6 / 8 * expected, rel=1e-8, abs=1e-20)


class _Wrapped(torch.nn.Module):
    """The model with one parameter replaced by a differentiable tensor (for the explicit Hessian)."""

    def __init__(self, model, name, value):
        super().__init__()
        self.model, self.name, self.value = model, name, value

    def forward(self, input_ids):
        from torch.func import functional_call

        return functional_call(self.model, {self.name: self.value}, args=(), kwargs={"input_ids": input_ids})


# The quadratic model: tr(H Sigma) in closed form ------------------------------------------------
#
# Per-example loss l_i(theta) = 1/2 (theta - x_i)^T A (theta - x_i), so the SGD update per unit lr is
# d_i = -A (theta - x_i) and Sigma = A S A with S the (unbiased) covariance of the x_i. Target
# T(theta) = -1/2 (theta - mu)^T B (theta - mu): H_T = -B, so tr(H_T Sigma) = -tr(B A S A).


def _spd(k, gen):
    m = torch.randn(k, k, generator=gen, dtype=torch.float64)
    return m @ m.T / k + 0.1 * torch.eye(k, dtype=torch.float64)


def _quadratic(k=5, n=7, seed=0):
    gen = torch.Generator().manual_seed(seed)
    A, B = _spd(k, gen), _spd(k, gen)
    theta = torch.randn(k, generator=gen, dtype=torch.float64)
    mu = torch.randn(k, generator=gen, dtype=torch.float64)
    x = torch.randn(n, k, generator=gen, dtype=torch.float64) * torch.linspace(0.5, 2.0, k, dtype=torch.float64)
    return A, B, theta, mu, x


def _sgd_updates(A, theta, x):
    """Per-example SGD updates per unit lr through the engine's own update rule, from autograd gradients."""
    from sample_effect.update.optim import OptimizerState
    from sample_effect.update.rules import ParamState

    cfg = UpdateConfig("sgd", lr=1.0)
    hyper = OptimizerState().hyper("theta", cfg)
    grads = []
    for xi in x:
        t = theta.clone().requires_grad_(True)
        (0.5 * (t - xi) @ A @ (t - xi)).backward()
        grads.append(t.grad)
    return cfg.rule.step(torch.stack(grads), theta, hyper, ParamState())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_trace_h_sigma_on_a_quadratic_model_equals_the_closed_form(seed):
    from sample_effect.growth.noise import loss_hvp, trace_from_centred

    A, B, theta, mu, x = _quadratic(seed=seed)
    d = _sgd_updates(A, theta, x)
    torch.testing.assert_close(d, -(theta - x) @ A.T, rtol=1e-12, atol=1e-12)
    hvp = loss_hvp(lambda p: 0.5 * (p["theta"] - mu) @ B @ (p["theta"] - mu), {"theta": theta})  # H_L = B, T = -L
    centred = [{"theta": di - d.mean(0)} for di in d]
    est = trace_from_centred(centred, hvp, sign=-1.0)
    S = torch.cov(x.T)  # unbiased, like the estimator
    closed = -torch.trace(B @ A @ S @ A).item()
    assert est.n == len(x)
    assert est.trace == pytest.approx(closed, rel=1e-12)


def test_trace_estimate_converges_to_the_population_value():
    """x_i ~ N(0, C): the estimator is unbiased for -tr(B A C A); with 4000 draws it lands within 4 standard errors."""
    from sample_effect.growth.noise import loss_hvp, trace_from_centred

    gen = torch.Generator().manual_seed(7)
    k = 4
    A, B, C = _spd(k, gen), _spd(k, gen), _spd(k, gen)
    theta, mu = torch.zeros(k, dtype=torch.float64), torch.ones(k, dtype=torch.float64)
    x = torch.randn(4000, k, generator=gen, dtype=torch.float64) @ torch.linalg.cholesky(C).T
    d = -(theta - x) @ A.T
    hvp = loss_hvp(lambda p: 0.5 * (p["theta"] - mu) @ B @ (p["theta"] - mu), {"theta": theta})
    est = trace_from_centred([{"theta": di - d.mean(0)} for di in d], hvp)
    population = -torch.trace(B @ A @ C @ A).item()
    assert abs(est.trace - population) < 4 * est.stderr
    assert est.stderr < 0.05 * abs(population)  # and the check is sharp


@pytest.mark.parametrize(("n", "b"), [(7, 1), (7, 3), (6, 6)])
def test_per_step_noise_is_the_exact_batch_expectation_on_a_quadratic(n, b):
    """For a quadratic T the second-order expansion is exact: averaging T after one SGD step over every batch of
    b examples drawn without replacement, minus T after the full-data step, equals per_step(lr, b, population=n)."""
    import itertools

    from sample_effect.growth.noise import loss_hvp, trace_from_centred

    A, B, theta, mu, x = _quadratic(n=n, seed=3)
    d = _sgd_updates(A, theta, x)

    def T(p):
        return float(-0.5 * (p - mu) @ B @ (p - mu))

    lr = 0.3
    batches = list(itertools.combinations(range(n), b))
    mean_after = sum(T(theta + lr * d[list(s)].mean(0)) for s in batches) / len(batches)
    exact = mean_after - T(theta + lr * d.mean(0))
    hvp = loss_hvp(lambda p: 0.5 * (p["theta"] - mu) @ B @ (p["theta"] - mu), {"theta": theta})
    est = trace_from_centred([{"theta": di - d.mean(0)} for di in d], hvp)
    assert est.per_step(lr, b, population=n) == pytest.approx(exact, rel=1e-10, abs=1e-15)
    if b < n:
        assert exact < 0  # a concave target loses from noise
        assert est.per_step(lr, b) != pytest.approx(exact, rel=1e-3)  # without the factor it is off


def test_noise_effect_spills_the_updates_and_deletes_them(model_dirs, tmp_path, monkeypatch):
    """Every per-example update goes to the spill file (none is kept in a list); the file is gone after."""
    from sample_effect.engine.core import ComputeConfig
    from sample_effect.growth import noise

    model, tok = load_model(model_dirs["qwen2"], "float64")
    params = select_parameters(model, r"^model\.norm\.weight|layers\.0\.mlp\.down_proj")
    exs, _ = tokenize_examples(examples_from_records(list(enumerate(TRAIN, 1))), tok)
    tgt, _ = tokenize_examples(examples_from_records(list(enumerate(TARGET, 1))), tok)
    dense = noise_effect_loss_target(model, params, exs, tgt, UpdateConfig("sgd", clip=0.05))
    made = []

    class Recording(noise.SpilledRows):
        def __init__(self, directory=None):
            super().__init__(directory)
            self.written = 0
            made.append(self)

        def append(self, row):
            super().append(row)
            self.written += 1

    monkeypatch.setattr(noise, "SpilledRows", Recording)
    est = noise_effect_loss_target(model, params, exs, tgt, UpdateConfig("sgd", clip=0.05),
                                   ComputeConfig(batch_size=1, progress=False), spill_dir=tmp_path)
    assert len(made) == 1 and made[0].written == len(exs) and len(made[0]) == 0  # all spilled, then closed
    assert est.n == dense.n and est.trace == pytest.approx(dense.trace, rel=1e-12)
