"""Effects summed over a real run's checkpoints: TracIn with the trainer's update, against a float64 loop."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from conftest import TARGET, TRAIN
from test_oracle import grouped, oracle_loss

from sample_effect import ComputeConfig, SampleEffectError, UpdateConfig, load_model
from sample_effect.data.examples import examples_from_records, tokenize_examples
from sample_effect.models.loading import select_parameters
from sample_effect.scoring.checkpoints import run_checkpoints, trajectory_effect_matrix
from sample_effect.scoring.effects import resolve_state
from sample_effect.scoring.matrix import compute_effect_matrix
from sample_effect.targets.core import LossTarget
from sample_effect.training.common import adamw_update
from sample_effect.training.sft import SFTConfig, train_sft

LR = 1e-3


@pytest.fixture(scope="module")
def run(model_dirs, tmp_path_factory):
    """A 4-step AdamW run (cosine schedule, so the lr differs between checkpoints) saved every 1 step."""
    out = tmp_path_factory.mktemp("traj")
    model, tok = load_model(model_dirs["qwen2"], "float64")
    exs, _ = tokenize_examples(examples_from_records(list(enumerate(TRAIN, 1))), tok)
    cfg = SFTConfig(update=adamw_update(LR, 1.0, 0.01), schedule="cosine", batch_size=2, max_steps=4, save_every=1)
    train_sft(model, tok, exs, cfg, out_dir=out, progress=False)
    tgt, _ = tokenize_examples(examples_from_records([(f"v{i}", r) for i, r in enumerate(TARGET)]), tok)
    return out, exs, tgt, tok


def _load(path):
    return load_model(path, "float64")


def test_run_checkpoints_reads_steps_and_lrs(model_dirs, run):
    out, *_ = run
    cks = run_checkpoints(out, base=model_dirs["qwen2"], lr=LR)
    assert [c.step for c in cks] == [0, 1, 2, 3]  # final/ (after step 4) is left out: no step was taken from it
    assert cks[0].optimizer_state is None and all(c.optimizer_state for c in cks[1:])
    lrs = [c.lr for c in cks]
    assert lrs[0] == LR and all(a > b for a, b in itertools.pairwise(lrs))  # cosine decay, read from optimizer.pt
    with pytest.raises(SampleEffectError, match="no checkpoint"):
        run_checkpoints(out / "nothing")


def test_sgd_trajectory_equals_tracin_loop(model_dirs, run):
    """With SGD, the sum is TracIn: sum_k lr_k <g_k(s), g_k(target j)>, g from one backward per example."""
    out, exs, tgt, tok = run
    cks = run_checkpoints(out, base=model_dirs["qwen2"], lr=LR)
    got = trajectory_effect_matrix(cks, _load, exs, [LossTarget([t]) for t in tgt], UpdateConfig("sgd"),
                                   compute=ComputeConfig(batch_size=2, progress=False))
    want = np.zeros_like(got)
    for ck in cks:
        model, _ = _load(ck.path)
        leaves = list(select_parameters(model).values())

        def grads(rows, model=model, leaves=leaves):
            return torch.stack([torch.cat([g.flatten() for g in torch.autograd.grad(oracle_loss(model, tok, p), leaves)])
                                for p in grouped(rows).values()])

        want += ck.lr * (grads(TRAIN) @ grads(TARGET).T).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-14)


def test_adamw_trajectory_uses_each_checkpoints_state(model_dirs, run):
    out, exs, tgt, _ = run
    cks = run_checkpoints(out, base=model_dirs["qwen2"], lr=LR)
    upd = adamw_update(LR, 1.0, 0.01)
    targets = [LossTarget(tgt)]
    got = trajectory_effect_matrix(cks, _load, exs, targets, upd)
    want = np.zeros_like(got)
    for ck in cks:
        model, _ = _load(ck.path)
        params = select_parameters(model)
        state = resolve_state(model, params, upd, ck.optimizer_state) if ck.optimizer_state else None
        if ck.optimizer_state:
            assert state is not None and state.params  # a real saved state is read
        want += ck.lr * compute_effect_matrix(model, params, exs, targets, upd, state)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    # the saved moments matter: the same checkpoints with fresh states give other effects
    fresh = [type(c)(c.path, None, c.lr, c.step) for c in cks]
    assert not np.allclose(trajectory_effect_matrix(fresh, _load, exs, targets, upd), got, rtol=1e-3)


def test_rank_trajectory_sums_a_train_sft_runs_checkpoints(model_dirs, data_files, tmp_path, capsys):
    """`train-sft --save-every` then `rank --trajectory`: the effect column is sum_k (lr_k / lr) e_k over the
    start and the saved checkpoints, each with its AdamW state."""
    import pandas as pd

    from sample_effect.cli.main import main

    run = tmp_path / "run"
    assert main(["train-sft", "--model", str(model_dirs["qwen2"]), "--data", str(data_files["train"]), "--out", str(run),
                 "--steps", "3", "--batch-size", "2", "--lr", "1e-3", "--save-every", "1", "--dtype", "float64",
                 "--quiet"]) == 0
    out = tmp_path / "ranked.csv"
    argv = ["rank", "--model", str(model_dirs["qwen2"]), "--data", str(data_files["train"]), "--target-data",
            str(data_files["target"]), "--optimizer", "adamw", "--lr", "1e-3", "--max-grad-norm", "1.0",
            "--dtype", "float64", "--out", str(out), "--quiet"]
    assert main([*argv, "--trajectory", str(run)]) == 0
    table = pd.read_csv(out).set_index("id")
    _, tok = _load(model_dirs["qwen2"])
    exs, _ = tokenize_examples(examples_from_records(list(enumerate(TRAIN, 1))), tok)
    tgt, _ = tokenize_examples(examples_from_records([(f"v{i}", r) for i, r in enumerate(TARGET)]), tok)
    cks = run_checkpoints(run, base=model_dirs["qwen2"], lr=1e-3)
    assert [c.step for c in cks] == [0, 1, 2]
    want = trajectory_effect_matrix(cks, _load, exs, [LossTarget(tgt)], adamw_update(1e-3, 1.0, 0.0))[:, 0] / 1e-3
    np.testing.assert_allclose(table.loc[[e.id for e in exs], "effect"].to_numpy(), want, rtol=1e-9)
    capsys.readouterr()
    assert main([*argv, "--overwrite", "--trajectory", str(tmp_path / "empty")]) == 2
    assert "no checkpoint" in capsys.readouterr().err
    assert main([*argv, "--overwrite", "--trajectory", str(run), "--cache-dir", str(tmp_path / "c")]) == 2
    assert "scores in memory" in capsys.readouterr().err
