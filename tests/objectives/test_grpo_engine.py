"""GRPO groups through the engine's fast paths against a float64 oracle.

The oracle takes, per prompt group, the loss `train_grpo` minimises on its first on-policy step
(`grpo_batch_loss`), calls `loss.backward()`, and takes the real optimiser step (SGD, SGD with
`clip_grad_norm_`, AdamW from a saved state) on a copy of the model; the effect is
(theta_after - theta_before) / lr dotted with G. The engine scores the same groups as examples
of the GRPO objective with the ghost, vmap and (SGD) jvp paths.
"""

from __future__ import annotations

import copy

import pytest
import torch

from sample_effect.engine.core import ComputeConfig, example_loss_values
from sample_effect.engine.vectors import TargetVector
from sample_effect.errors import SampleEffectError
from sample_effect.models.loading import load_model, select_parameters
from sample_effect.objectives.base import SFT, GRPOObjective, grpo_example
from sample_effect.objectives.losses import grpo_advantages
from sample_effect.rollouts.groups import Rollout
from sample_effect.scoring.effects import compute_effects, resolve_state
from sample_effect.training.grpo import grpo_batch_loss
from sample_effect.update.optim import UpdateConfig

LR = 1e-3
TOL = 1e-6
REWARDS = [[1.0, 0.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 1.0, 0.0], [0.5, 0.0, 1.0, 0.25]]


def make_groups(vocab: int, seed: int = 0) -> list[list[Rollout]]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for g, rewards in enumerate(REWARDS):
        prompt = torch.randint(3, vocab, (3 + g,), generator=gen)
        group = []
        adv = grpo_advantages(torch.tensor([rewards], dtype=torch.float64))[0].tolist()
        for i, (r, a) in enumerate(zip(rewards, adv)):
            comp = torch.randint(3, vocab, (2 + (i + g) % 4,), generator=gen)
            ids = torch.cat([prompt, comp])
            group.append(Rollout(f"p{g}", "", ids, len(prompt), "", True, r, a))
        out.append(group)
    return out


def as_examples(groups: list[list[Rollout]]):
    return [grpo_example(g[0].prompt_id, [r.ids for r in g], [r.start for r in g], [r.advantage for r in g]) for g in groups]


def oracle_effects(model, names, groups, direction, make_opt, state=None, clip=None):
    out = []
    for group in groups:
        m = copy.deepcopy(model)
        named = dict(m.named_parameters())
        opt = make_opt([named[n] for n in names])
        if state is not None:
            opt.load_state_dict(copy.deepcopy(state))
            for group_ in opt.param_groups:  # the saved state carries the earlier run's lr
                group_["lr"] = LR
        m.zero_grad()
        grpo_batch_loss(m, group).backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_([named[n] for n in names], clip)
        before = {n: named[n].detach().clone() for n in names}
        opt.step()
        out.append(sum(((named[n].detach() - before[n]) / LR * direction[n]).sum() for n in names).item())
    return out


@pytest.fixture(scope="module", params=["gpt2", "qwen2"])
def setup(request, model_dirs, workdir):
    model, tok = load_model(model_dirs[request.param], "float64")
    params = select_parameters(model)
    names = list(params)
    gen = torch.Generator().manual_seed(1)
    direction = {n: torch.randn(p.shape, generator=gen, dtype=torch.float64) for n, p in params.items()}
    groups = make_groups(len(tok))
    # A saved AdamW state: three real steps on GRPO groups, then the state dict and its parameter order.
    trained = copy.deepcopy(model)
    named = dict(trained.named_parameters())
    opt = torch.optim.AdamW([named[n] for n in names], lr=1e-2, betas=(0.8, 0.95), eps=1e-7, weight_decay=0.1)
    for group in make_groups(len(tok), seed=5)[:3]:
        opt.zero_grad()
        grpo_batch_loss(trained, group).backward()
        opt.step()
    opt.zero_grad()
    state_file = workdir / f"grpo-state-{request.param}.pt"
    torch.save({"optimizer": opt.state_dict(), "param_names": names}, state_file)
    return {"model": model, "trained": trained, "names": names, "direction": direction, "groups": groups,
            "state": opt.state_dict(), "state_file": state_file}


CASES = {
    "sgd": (dict(optimizer="sgd", lr=LR), lambda ps: torch.optim.SGD(ps, lr=LR), False, None),
    "sgd-clip": (dict(optimizer="sgd", lr=LR, clip=0.05), lambda ps: torch.optim.SGD(ps, lr=LR), False, 0.05),
    "adamw-state-clip": (
        dict(optimizer="adamw", lr=LR, beta1=0.8, beta2=0.95, eps=1e-7, weight_decay=0.1, clip=0.05),
        lambda ps: torch.optim.AdamW(ps, lr=LR, betas=(0.8, 0.95), eps=1e-7, weight_decay=0.1), True, 0.05,
    ),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("method", ["ghost", "vmap", "jvp"])
def test_grpo_effects_match_oracle(setup, case, method):
    kwargs, make_opt, from_state, clip = CASES[case]
    if method == "jvp" and case != "sgd":
        pytest.skip("the jvp path computes unclipped SGD effects only")
    model = setup["trained"] if from_state else setup["model"]
    params = select_parameters(model)
    update = UpdateConfig(**kwargs)
    state = resolve_state(model, params, update, setup["state_file"] if from_state else None)
    target = TargetVector({n: setup["direction"][n] for n in params}, "direction")
    res = compute_effects(model, params, as_examples(setup["groups"]), target, update, state,
                          ComputeConfig(method=method, progress=False), objective=GRPOObjective())
    want = oracle_effects(model, setup["names"], setup["groups"], setup["direction"], make_opt,
                          setup["state"] if from_state else None, clip)
    got = res.effect.tolist()
    scale = max(abs(w) for w in want)
    for g, w in zip(got, want):
        assert abs(g - w) <= TOL * scale, (case, method, got, want)
    assert abs(got[1]) <= 1e-12 * scale if case != "adamw-state-clip" else True  # zero-variance group: no gradient


def test_grpo_example_loss_is_the_policy_gradient_surrogate(setup):
    """The engine's loss of a group is -(1/N) sum_i A_i sum_t log pi(y_i,t): the trainer's loss at ratio 1 has its gradient."""
    from sample_effect.training.grpo import policy_logprobs

    model = setup["model"]
    got = example_loss_values(model, as_examples(setup["groups"]), objective=GRPOObjective())
    want = []
    with torch.no_grad():
        for g in setup["groups"]:
            lp, mask = policy_logprobs(model, g)
            adv = torch.tensor([r.advantage for r in g], dtype=lp.dtype)
            want.append(float(-(adv[:, None] * lp * mask).sum() / mask.sum()))
    assert torch.allclose(got, torch.tensor(want, dtype=torch.float64), rtol=1e-10, atol=1e-12)


def test_grpo_objective_needs_rollout_weights(setup):
    from sample_effect.data.examples import TokenizedExample

    ex = TokenizedExample("x", [torch.tensor([1, 2, 3, 4])], [2])
    assert SFT.sequence_weights(ex) == [1.0]
    with pytest.raises(SampleEffectError, match="per-sequence weights"):
        GRPOObjective().sequence_weights(ex)
