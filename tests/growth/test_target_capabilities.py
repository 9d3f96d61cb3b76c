"""growth/ asks a target what it can do, not what type it is: a Target subclass defined here gets the same
treatment (the same record, the same Hessian term) as the built-in whose capabilities it declares."""

from __future__ import annotations

import warnings

import pytest
import torch
from conftest import TARGET, TRAIN

from sample_effect import UpdateConfig, load_model
from sample_effect.data.examples import examples_from_records, tokenize_examples
from sample_effect.engine.core import ComputeConfig, mean_loss_gradient
from sample_effect.engine.vectors import TargetVector
from sample_effect.growth.rl import predict_rl
from sample_effect.models.loading import select_parameters
from sample_effect.rollouts.groups import sample_groups
from sample_effect.rollouts.prompts import RLPrompt
from sample_effect.targets.core import LossTarget, Target

QUIET = ComputeConfig(progress=False)


def long_completion(prompt, completion, answer, finished=True):
    return float(len(completion.strip()) >= 4)


class HeldOutLoss(Target):
    """A loss target written from scratch (not a LossTarget): G = -grad of the mean loss, with its Hessian."""

    label = "a loss target"

    def __init__(self, examples):
        self.examples, self.name = examples, "loss"

    def resolve(self, model, params, scored, compute=None):
        grad, loss = mean_loss_gradient(model, params, self.examples, compute)
        return TargetVector({n: -g for n, g in grad.items()}, self.name, target_loss=loss)

    def hessian_examples(self):
        return self.examples


class FixedDirection(Target):
    """A fixed vector that declares itself linear in theta, as a direction target is."""

    label = "a fixed direction"

    def __init__(self, vector):
        self.vector, self.name = vector, "direction"

    @property
    def linear_in_theta(self):
        return True

    def resolve(self, model, params, scored, compute=None):
        return TargetVector(dict(self.vector), self.name)


class Opaque(FixedDirection):
    """Declares nothing: no Hessian, not linear."""

    label = "an opaque target"

    @property
    def linear_in_theta(self):
        return False


def _setup(model_dirs):
    model, tok = load_model(model_dirs["llama"], "float64")
    params = select_parameters(model, r"layers\.1\.mlp")
    tgt, _ = tokenize_examples(examples_from_records(list(enumerate(TARGET, 1))), tok)
    prompts = [RLPrompt(f"p{i}", r["prompt"], "") for i, r in enumerate(TRAIN[:5])]
    groups = sample_groups(model, tok, prompts, long_completion, 4, 1.0, 3, seed=5, progress=False)
    return model, tok, params, tgt, groups


def _record(model, tok, params, groups, target, update, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rec = predict_rl(model, tok, [], long_completion, target, update, groups=groups, params=params,
                         prompts_per_step=2, compute=QUIET, n_boot=20, noise_draws=4, **kw).record
    rec.pop("seconds")
    return rec


def test_a_new_loss_target_gets_the_loss_targets_hessian_terms(model_dirs):
    model, tok, params, tgt, groups = _setup(model_dirs)
    upd = UpdateConfig("sgd", lr=1e-3)
    builtin = _record(model, tok, params, groups, LossTarget(tgt), upd, curvature_draws=2)
    custom = _record(model, tok, params, groups, HeldOutLoss(tgt), upd, curvature_draws=2)
    assert builtin["noise_hessian_effect"] is not None and builtin["second_order_effect"] is not None
    assert custom == builtin


def test_a_new_linear_target_gets_a_zero_hessian_term_and_an_undeclared_one_none(model_dirs):
    model, tok, params, _, groups = _setup(model_dirs)
    gen = torch.Generator().manual_seed(1)
    vec = {n: torch.randn(p.shape, generator=gen, dtype=torch.float64) for n, p in params.items()}
    upd = UpdateConfig("sgd", lr=1e-3)
    builtin = _record(model, tok, params, groups, TargetVector(dict(vec), "direction"), upd)
    custom = _record(model, tok, params, groups, FixedDirection(vec), upd)
    assert builtin["noise_hessian_effect"] == 0.0 and custom == builtin
    opaque = _record(model, tok, params, groups, Opaque(vec), upd)
    assert opaque["noise_hessian_effect"] is None and opaque["noise_effect"] is None
    assert "not estimated for an opaque target (its Hessian is not available)" in opaque["noise_note"]
    assert opaque["positive_effect"] == pytest.approx(builtin["positive_effect"], rel=1e-12)
