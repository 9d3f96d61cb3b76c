"""predict-rl in bounded memory: the noise terms' per-prompt gradients are spilled to disk and streamed.

(a) peak RSS of a fresh process running `predict_rl` with every noise term on is flat in the
number of prompts; (b) the streamed terms equal the all-in-memory formulas exactly; (c) the
spill file round-trips bit for bit; (d) the memory guard now counts the resident vectors only.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TARGET, TRAIN

from sample_effect import UpdateConfig, load_model
from sample_effect.data.examples import examples_from_records, tokenize_examples
from sample_effect.engine.core import ComputeConfig
from sample_effect.growth.noise import (
    SpilledRows,
    spill_space_note,
    target_loss_hvp,
    trace_from_centred,
)
from sample_effect.growth.rl import predict_rl
from sample_effect.growth.rl_batches import batch_step_effects
from sample_effect.growth.rl_config import RESIDENT_COPIES, _noise_memory_note
from sample_effect.growth.rl_curvature import rl_noise_effect
from sample_effect.growth.rl_effects import RLEffects, rl_prompt_effects
from sample_effect.growth.rl_stats import batch_draws
from sample_effect.growth.trajectory import StepContext
from sample_effect.models.loading import select_parameters
from sample_effect.rollouts.groups import sample_groups
from sample_effect.rollouts.prompts import RLPrompt
from sample_effect.targets.core import LossTarget, resolve_target

QUIET = ComputeConfig(progress=False)
TESTS = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, resource, sys, warnings
sys.path.insert(0, sys.argv[2])
import torch
from conftest import CORPUS, TARGET, TRAIN
from sample_effect import UpdateConfig
from sample_effect.data.examples import examples_from_records, tokenize_examples
from sample_effect.engine.core import ComputeConfig
from sample_effect.growth.rl import predict_rl
from sample_effect.models.tiny import build_tiny_model, train_tokenizer
from sample_effect.targets.core import LossTarget
from sample_effect.rollouts.prompts import RLPrompt

def parity(prompt, completion, answer, finished=True):
    return float(sum(map(ord, completion)) % 2)

n, rule, new_tokens, group = int(sys.argv[1]), sys.argv[4], int(sys.argv[5]), int(sys.argv[6])
torch.set_num_threads(1)
tok = train_tokenizer(CORPUS * 5, vocab_size=320)
model = build_tiny_model("gpt2", tok, torch.float32, seed=0, hidden=256, layers=4)  # 3.4M parameters
tgt, _ = tokenize_examples(examples_from_records(list(enumerate(TARGET[:1], 1))), tok)
prompts = [RLPrompt(f"p{i}", TRAIN[i % len(TRAIN)]["prompt"] + f" {i}", "") for i in range(n)]
upd = UpdateConfig(rule, lr=1e-3, clip=0.05 if rule == "sgd" else 1.0)  # SGD + clipping + loss target: all three noise terms
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    rec = predict_rl(model, tok, prompts, parity, LossTarget(tgt), upd, group_size=group, max_new_tokens=new_tokens,
                     prompts_per_step=8, compute=ComputeConfig(progress=False, memory_budget="64GB"), n_boot=20,
                     noise_draws=8, curvature_draws=2, spill_dir=sys.argv[3]).record
print(json.dumps({"rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "params": sum(p.numel() for p in model.parameters()), "informative": n - rec["zero_variance_groups"],
                  "terms": [rec["noise_hessian_effect"], rec["noise_batch_effect"], rec["second_order_effect"]]}))
"""


def _peak_rss(n: int, spill: Path, rule: str = "sgd", new_tokens: int = 1, group: int = 2) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-c", CHILD, str(n), str(TESTS), str(spill), rule, str(new_tokens), str(group)],
                         capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize(("rule", "new_tokens", "group"), [("sgd", 1, 2), ("adamw", 4, 4)])
def test_predict_rl_peak_memory_is_flat_in_the_number_of_prompts(tmp_path, rule, new_tokens, group):
    """16 vs 128 prompts. SGD with clipping, 1 new token, groups of 2 (5 vs 57 informative, each gradient
    13.5 MB): with the per-prompt gradients in memory the peaks were 798 and 3130 MB; spilled, both sit at
    the floor (about 600 MB). AdamW with clipping, 4 new tokens, groups of 4: what users run."""
    small, large = _peak_rss(16, tmp_path, rule, new_tokens, group), _peak_rss(128, tmp_path, rule, new_tokens, group)
    print(f"{rule}: peak RSS: 16 prompts {small['rss_mb']:.0f} MB, 128 prompts {large['rss_mb']:.0f} MB "
          f"({small['params']} parameters, {small['informative']} / {large['informative']} informative)")
    for r in (small, large):
        # every term that applies ran: the Hessian noise term (SGD only), the batch term and the second-order term
        assert all(r["terms"][i] is not None for i in ((0, 1, 2) if rule == "sgd" else (1, 2)))
    assert large["informative"] >= 40  # enough kept gradients (> 500 MB) that holding them would show
    assert large["rss_mb"] <= 1.3 * small["rss_mb"]
    assert not list(tmp_path.iterdir())  # the spill file is gone


# (b) ------------------------------------------------------------------------------------------


def _setup(model_dirs, arch="gpt2"):
    model, tok = load_model(model_dirs[arch], "float64")
    params = select_parameters(model)
    tgt, _ = tokenize_examples(examples_from_records(list(enumerate(TARGET, 1))), tok)
    prompts = [RLPrompt(f"p{i}", r["prompt"], "") for i, r in enumerate(TRAIN)]
    groups = sample_groups(model, tok, prompts, lambda p, c, a: float(len(c.strip()) >= 4), 4, 1.0, 3, seed=0,
                           progress=False)
    for k, g in enumerate(groups):  # unequal token counts, so the weights matter
        for i, r in enumerate(g):
            r.ids = r.ids[: r.start + 1 + (i + k) % 3]
    return model, tok, params, tgt, groups


def test_streamed_noise_terms_equal_the_in_memory_formulas_exactly(model_dirs):
    """The spilled, streamed Hessian trace and batch-step effects are the all-in-memory ones to the last bit."""
    model, _, params, tgt, groups = _setup(model_dirs)
    G = resolve_target(LossTarget(tgt), model, params, [], QUIET)
    upd = UpdateConfig("sgd", lr=1e-3, clip=0.05)
    ctx = StepContext.build(params, upd)
    eff = rl_prompt_effects(model, ctx, groups, G, keep_updates=True, keep_grads=True, compute=QUIET)
    assert isinstance(eff.grads, SpilledRows) and len(eff.grads) == int((~eff.zero_variance).sum()) >= 3
    grads = [eff.grads[j] for j in range(len(eff.grads))]
    ups = [ctx.step(g)[0] for g in grads]
    # the formulas as written before the spill: lists of dense per-prompt tensors
    w = eff.n_tokens[~eff.zero_variance].astype(np.float64)
    dbar = {nm: sum(float(wi) * u[nm] for wi, u in zip(w, ups)) / float(w.sum()) for nm in params}
    centred = [{nm: (float(wi) / float(w.mean())) * (u[nm] - dbar[nm]) for nm in params} for wi, u in zip(w, ups)]
    ref = trace_from_centred(centred, target_loss_hvp(model, params, tgt), sign=-1.0)
    got = rl_noise_effect(model, params, eff, tgt)
    assert (got.trace, got.stderr) == (ref.trace, ref.stderr)
    batches, _ = batch_draws(len(groups), 3, 12, seed=4)
    informative = np.flatnonzero(~eff.zero_variance)
    slot = {int(x): j for j, x in enumerate(informative)}
    expected = []
    for idx in batches:
        chosen = [int(x) for x in idx if int(x) in slot]
        if not chosen:
            expected.append(0.0)
            continue
        wb = eff.n_tokens[chosen].astype(np.float64)
        wb = wb / wb.sum()
        g = {nm: sum(float(wi) * grads[slot[x]][nm] for wi, x in zip(wb, chosen)) for nm in params}
        d = ctx.step(g)[0]
        expected.append(sum(float(torch.dot(v.flatten(), G.vector[nm].to(v.dtype).flatten())) for nm, v in d.items()))
    np.testing.assert_array_equal(batch_step_effects(eff, ctx, batches), expected)
    listed = RLEffects(eff.ids, eff.effect, eff.n_tokens, eff.zero_variance, eff.reward_mean, eff.grad_norm,
                       eff.rollout_effect, G, updates=ups, grads=grads)  # plain lists still work
    assert rl_noise_effect(model, params, listed, tgt).trace == ref.trace
    eff.release()
    assert eff.grads is None and eff.updates is None


def test_spilled_rows_round_trip_bit_for_bit(tmp_path):
    rows = SpilledRows(tmp_path)
    gen = torch.Generator().manual_seed(0)
    data = [{"a": torch.randn(3, 4, generator=gen, dtype=torch.float64), "b": torch.randn(5, generator=gen).to(torch.bfloat16),
             "empty": torch.zeros(0)} for _ in range(4)]
    for d in data:
        rows.append(d)
    assert len(rows) == 4 and rows.nbytes == 4 * (12 * 8 + 5 * 2)
    for i in (2, 0, 3, 1, -1):  # any order, repeatedly
        got = rows[i]
        for k, t in data[i].items():
            assert got[k].dtype == t.dtype and got[k].shape == t.shape and torch.equal(got[k], t)
    with pytest.raises(IndexError):
        rows[4]
    with pytest.raises(Exception, match="same parameters"):
        rows.append({"a": data[0]["a"]})
    rows.close()
    assert len(rows) == 0 and not list(tmp_path.iterdir())  # anonymous: nothing left in the directory


def test_spill_space_note_names_the_need_and_the_directory(tmp_path):
    assert spill_space_note(1, tmp_path) is None
    note = spill_space_note(10**18, tmp_path)
    assert note is not None and "spill_dir" in note and str(tmp_path) in note


# (d) ------------------------------------------------------------------------------------------


def test_memory_guard_counts_the_resident_vectors_not_one_per_prompt(model_dirs):
    """A budget below the weights plus one gradient per prompt now suffices (the per-prompt ones are on
    disk, same numbers); below the few resident vectors the noise terms are still skipped, with the reason.
    (The budget counts the weights, which in this float64 model are one `row` too.)"""
    model, tok, params, tgt, groups = _setup(model_dirs)
    upd = UpdateConfig("adamw", lr=1e-4, clip=1.0)
    row = sum(p.numel() for p in model.parameters()) * 8
    kw = {"groups": groups, "prompts_per_step": 2, "n_boot": 10}
    full = predict_rl(model, tok, [], None, LossTarget(tgt), upd, compute=QUIET, **kw).record
    fits = predict_rl(model, tok, [], None, LossTarget(tgt), upd, compute=ComputeConfig(progress=False,
                      memory_budget=(len(groups) + 1) * row - 1), **kw).record
    # (the budget also sets the target gradient's chunks, hence rounding-level differences)
    assert full["noise_effect"] is not None and fits["noise_effect"] == pytest.approx(full["noise_effect"], rel=1e-10)
    assert fits["second_order_effect"] == pytest.approx(full["second_order_effect"], rel=1e-10)
    note = _noise_memory_note(params, len(groups), ComputeConfig(memory_budget=RESIDENT_COPIES * row - 1), None)
    assert note is not None and "memory budget" in note and "dense vectors at a time" in note
    assert _noise_memory_note(params, len(groups), ComputeConfig(memory_budget=RESIDENT_COPIES * row), None) is None

