"""Noise-effect estimator against an explicit Hessian and covariance on a small parameter subset."""

from __future__ import annotations

import pytest
import torch
from conftest import TARGET, TRAIN

from sample_effect import UpdateConfig, load_model, select_parameters
from sample_effect.data import examples_from_records, pad_sequences, tokenize_examples
from sample_effect.growth import noise_effect_loss_target
from sample_effect.losses import sft_sequence_loss


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
