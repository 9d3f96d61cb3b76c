"""The engine against an independent float64 oracle.

The oracle shares no code with the engine: it tokenises by hand, computes each example's loss
with a plain forward, calls `loss.backward()` one example at a time, and takes the update with
the real `torch.optim` optimiser (and `clip_grad_norm_`) on a copy of the model. The effect is
(theta_after - theta_before) / lr dotted with G.
"""

from __future__ import annotations

import copy
import itertools
import re
from collections import OrderedDict

import pytest
import torch
from conftest import ARCHS, TARGET, TRAIN

from sample_effect import (
    ComputeConfig,
    DirectionTarget,
    LossTarget,
    SelfTarget,
    UpdateConfig,
    load_examples,
    load_model,
)
from sample_effect.data.examples import tokenize_examples
from sample_effect.scoring.effects import score_examples_result

LR = 1e-3
TOL = 1e-6
SUBSET = r"\.(attn|self_attn|mlp)\."  # a parameter subset: attention and MLP weights only


def grouped(rows):
    out: OrderedDict[str, list[tuple[str, str]]] = OrderedDict()
    for r in rows:
        out.setdefault(r["id"], []).append((r["prompt"], r["response"]))
    return out


def oracle_loss(model, tok, pairs):
    """Mean over responses of the mean response-token NLL, tokenised by hand."""
    losses = []
    for prompt, response in pairs:
        p = tok(prompt)["input_ids"]
        r = tok(response, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        ids = torch.tensor([p + r])
        logp = torch.log_softmax(model(input_ids=ids).logits[0], dim=-1)
        nll = torch.stack([-logp[t - 1, ids[0, t]] for t in range(len(p), len(p) + len(r))])
        losses.append(nll.mean())
    return torch.stack(losses).mean()


def oracle_grads(model, tok, rows, names):
    out = []
    params = dict(model.named_parameters())
    for pairs in grouped(rows).values():
        model.zero_grad()
        oracle_loss(model, tok, pairs).backward()
        out.append({n: params[n].grad.detach().clone() for n in names})
    model.zero_grad()
    return out


def oracle_step(model, names, grads, make_opt, state=None, clip=None):
    """(theta_after - theta_before) / lr for one real optimiser step on `grads`."""
    m = copy.deepcopy(model)
    named = dict(m.named_parameters())
    opt = make_opt(m, names)
    if state is not None:
        opt.load_state_dict(copy.deepcopy(state))  # load_state_dict may share tensors; step() would mutate them
    for n in names:
        named[n].grad = grads[n].clone()
    if clip is not None:
        torch.nn.utils.clip_grad_norm_([named[n] for n in names], clip)
    before = {n: named[n].detach().clone() for n in names}
    opt.step()
    return {n: (named[n].detach() - before[n]) / LR for n in names}


def groups(m, names, decay=0.1):
    named = dict(m.named_parameters())
    dec = [named[n] for n in names if named[n].dim() >= 2]
    nodec = [named[n] for n in names if named[n].dim() < 2]
    return [{"params": dec, "weight_decay": decay}, {"params": nodec, "weight_decay": 0.0}]


def ordered_names(m, names):
    """Names in the optimiser's parameter order (the groups above, concatenated)."""
    named = dict(m.named_parameters())
    return [n for n in names if named[n].dim() >= 2] + [n for n in names if named[n].dim() < 2]


def dot(a, b):
    return sum((a[n] * b[n]).sum() for n in b).item()


@pytest.fixture(scope="module", params=ARCHS)
def setup(request, model_dirs, data_files, workdir):
    """Per architecture: the base model, a model trained 3 real AdamW steps with its saved state, a final checkpoint."""
    arch = request.param
    model, tok = load_model(model_dirs[arch], "float64")
    names_all = [n for n, p in model.named_parameters() if p.requires_grad]
    # A few real AdamW steps with two parameter groups and non-default betas/eps.
    trained = copy.deepcopy(model)
    opt = torch.optim.AdamW(groups(trained, names_all), lr=1e-2, betas=(0.8, 0.95), eps=1e-7)
    gen = torch.Generator().manual_seed(0)
    ids = list(grouped(TRAIN).values())
    for _ in range(3):
        pick = torch.randint(len(ids), (2,), generator=gen).tolist()
        loss = sum(oracle_loss(trained, tok, ids[i]) for i in pick) / 2
        opt.zero_grad()
        loss.backward()
        opt.step()
    opt.zero_grad()
    trained_dir = workdir / f"trained-{arch}"
    trained.save_pretrained(trained_dir)
    tok.save_pretrained(trained_dir)
    state_file = workdir / f"state-{arch}.pt"
    torch.save({"optimizer": opt.state_dict(), "param_names": ordered_names(trained, names_all)}, state_file)
    # A final checkpoint for the direction target.
    final = copy.deepcopy(model)
    with torch.no_grad():
        for p in final.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    final_dir = workdir / f"final-{arch}"
    final.save_pretrained(final_dir)
    tok.save_pretrained(final_dir)
    trained_model, _ = load_model(trained_dir, "float64")
    return {
        "arch": arch, "tok": tok, "base": model, "trained": trained_model, "state": state_file,
        "state_dict": opt.state_dict(), "base_dir": model_dirs[arch], "final_dir": final_dir, "files": data_files,
    }


UPDATES = {
    # name: (UpdateConfig kwargs, oracle optimiser factory, uses the trained model + saved state)
    "sgd": ({"optimizer": "sgd"}, lambda m, ns: torch.optim.SGD([dict(m.named_parameters())[n] for n in ns], lr=LR), False),
    "sgd_wd": (
        {"optimizer": "sgd", "weight_decay": 0.05},
        lambda m, ns: torch.optim.SGD([dict(m.named_parameters())[n] for n in ns], lr=LR, weight_decay=0.05),
        False,
    ),
    "adam_l2": (
        {"optimizer": "adam", "weight_decay": 0.01},
        lambda m, ns: torch.optim.Adam([dict(m.named_parameters())[n] for n in ns], lr=LR, weight_decay=0.01),
        False,
    ),
    "adamw_fresh": ({"optimizer": "adamw"}, lambda m, ns: torch.optim.AdamW([dict(m.named_parameters())[n] for n in ns], lr=LR), False),
    "adamw_state": (
        {"optimizer": "adamw"},
        lambda m, ns: torch.optim.AdamW(groups(m, ns), lr=LR, betas=(0.8, 0.95), eps=1e-7),
        True,
    ),
}


@pytest.mark.parametrize("method", ["ghost", "vmap"])
@pytest.mark.parametrize("params", [None, SUBSET], ids=["all", "subset"])
def test_effects_match_oracle(setup, params, method):
    tok = setup["tok"]
    train = load_examples(setup["files"]["train"])
    target_ex, _ = tokenize_examples(load_examples(setup["files"]["target"]), tok)
    direction = DirectionTarget(setup["base_dir"], setup["final_dir"])
    compute = ComputeConfig(batch_size=2, progress=False, method=method)  # vmap: an example straddles two chunks
    worst = {}
    for upd_name, (kwargs, make_opt, use_state) in UPDATES.items():
        model = setup["trained"] if use_state else setup["base"]
        names = [n for n, p in model.named_parameters() if p.requires_grad and (params is None or re.search(params, n))]
        g_train = oracle_grads(model, tok, TRAIN, names)
        g_target = oracle_grads(model, tok, TARGET, names)
        norms = sorted(dot(g, g) ** 0.5 for g in g_train)
        clip_value = norms[len(norms) // 2]  # clips about half of the examples
        state = None
        if use_state:  # the saved state covers all parameters; restrict to `names` for the oracle optimiser
            full = copy.deepcopy(model)
            all_names = [n for n, p in full.named_parameters() if p.requires_grad]
            big = torch.optim.AdamW(groups(full, all_names), lr=LR, betas=(0.8, 0.95), eps=1e-7)
            big.load_state_dict(setup["state_dict"])
            small = make_opt(full, names)
            for p_small in [p for g in small.param_groups for p in g["params"]]:
                small.state[p_small] = copy.deepcopy(big.state[p_small])
            state = small.state_dict()
        base_d = dict(setup["base"].named_parameters())  # G = theta_final - theta_base, whatever model is scored
        final_d = dict(load_model(setup["final_dir"], "float64")[0].named_parameters())
        targets = {
            "data": (LossTarget(target_ex), {n: -sum(g[n] for g in g_target) / len(g_target) for n in names}),
            "self": (SelfTarget(), {n: -sum(g[n] for g in g_train) / len(g_train) for n in names}),
            "direction": (direction, {n: (final_d[n] - base_d[n]).detach() for n in names}),
        }
        for clip, (tname, (target, G)) in itertools.product([None, clip_value], targets.items()):
            steps = [oracle_step(model, names, g, make_opt, state, clip) for g in g_train]
            expected = torch.tensor([dot(d, G) for d in steps], dtype=torch.float64)
            res = score_examples_result(
                model, tok, train, target, UpdateConfig(lr=LR, clip=clip, **kwargs), params=params,
                optimizer_state=setup["state"] if use_state else None, compute=compute,
            )
            got = torch.tensor(res.effect, dtype=torch.float64)
            err = ((got - expected).abs().max() / expected.abs().max()).item()
            worst[(upd_name, clip is not None, tname)] = err
    print(f"{setup['arch']}/{params}: worst relative error {max(worst.values()):.2e} over {len(worst)} cases")
    bad = {k: v for k, v in worst.items() if not v <= TOL}
    assert not bad, f"{setup['arch']}: relative errors above {TOL}: {bad}"
