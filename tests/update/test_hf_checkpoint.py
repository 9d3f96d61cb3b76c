"""`--optimizer-state DIR`: a transformers Trainer checkpoint's optimizer.pt (indices, no names)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sample_effect import SampleEffectError
from sample_effect.cli.main import main
from sample_effect.models.loading import load_model
from sample_effect.update.hf_checkpoint import trainer_groupings


def trainer_state(model: torch.nn.Module) -> tuple[dict, list[str]]:
    """AdamW state after two steps, grouped as Trainer.create_optimizer groups (decay, then no decay)."""
    (_, (decay, no_decay)) = trainer_groupings(model)[0]
    named = dict(model.named_parameters())
    opt = torch.optim.AdamW(
        [{"params": [named[n] for n in decay], "weight_decay": 0.05},
         {"params": [named[n] for n in no_decay], "weight_decay": 0.0}], lr=1e-3, betas=(0.8, 0.99),
    )
    gen = torch.Generator().manual_seed(0)
    for _ in range(2):
        opt.zero_grad()
        loss = sum((p * torch.randn(p.shape, generator=gen, dtype=p.dtype)).sum() for p in model.parameters())
        loss.backward()
        opt.step()
    return opt.state_dict(), decay + no_decay


def test_trainer_checkpoint_dir_equals_named_state(tmp_path: Path, model_dirs, data_files) -> None:
    m = model_dirs["llama"]  # has RMSNorm weights: the newer rule puts them in the no-decay group
    model, _ = load_model(str(m), "float64")
    (_, (decay, no_decay)) = trainer_groupings(model)[0]
    assert decay and no_decay and not any("norm" in n for n in decay)
    sd, names = trainer_state(model)
    ckpt = tmp_path / "checkpoint-2"
    ckpt.mkdir()
    torch.save(sd, ckpt / "optimizer.pt")
    torch.save({"optimizer": sd, "param_names": names}, tmp_path / "named.pt")
    argv = ["rank", "--model", str(m), "--data", str(data_files["train"]), "--target", "self", "--optimizer", "adamw",
            "--quiet", "--dtype", "float64"]
    outs = []
    for state in (ckpt, tmp_path / "named.pt"):
        out = tmp_path / f"{Path(state).stem}.csv"
        assert main([*argv, "--optimizer-state", str(state), "--out", str(out)]) == 0
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]
    fresh = tmp_path / "fresh.csv"
    assert main([*argv, "--out", str(fresh)]) == 0
    assert fresh.read_bytes() != outs[0]  # the moments were used


def test_trainer_checkpoint_mismatch_is_clear(tmp_path: Path, model_dirs) -> None:
    other, _ = load_model(str(model_dirs["gpt2"]), "float64")
    sd, _ = trainer_state(other)
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    torch.save(sd, ckpt / "optimizer.pt")
    model, _ = load_model(str(model_dirs["llama"]), "float64")
    from sample_effect.models.loading import select_parameters
    from sample_effect.scoring.effects import resolve_state
    from sample_effect.update.optim import UpdateConfig

    chosen = select_parameters(model, None)
    with pytest.raises(SampleEffectError, match="does not match the model's trainable parameters"):
        resolve_state(model, chosen, UpdateConfig("adamw"), ckpt)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SampleEffectError, match=r"without optimizer\.pt"):
        resolve_state(model, chosen, UpdateConfig("adamw"), empty)


def test_own_checkpoint_dir_is_read_by_name(tmp_path: Path, model_dirs) -> None:
    """A directory holding optimizer.pt in this project's named format (train-sft checkpoints) also works."""
    from sample_effect.models.loading import select_parameters
    from sample_effect.scoring.effects import resolve_state
    from sample_effect.update.optim import UpdateConfig

    model, _ = load_model(str(model_dirs["gpt2"]), "float64")
    sd, names = trainer_state(model)
    (tmp_path / "own").mkdir()
    (tmp_path / "hf").mkdir()
    torch.save({"optimizer": sd, "param_names": names}, tmp_path / "own" / "optimizer.pt")
    torch.save(sd, tmp_path / "hf" / "optimizer.pt")
    chosen = select_parameters(model, None)
    a = resolve_state(model, chosen, UpdateConfig("adamw"), tmp_path / "own")
    b = resolve_state(model, chosen, UpdateConfig("adamw"), tmp_path / "hf")
    assert a is not None and b is not None and set(a.tensors("exp_avg")) == set(chosen) == set(b.tensors("exp_avg"))
    assert all(torch.equal(a.tensors("exp_avg_sq")[n], b.tensors("exp_avg_sq")[n]) for n in chosen)
    assert a.groups == b.groups and a.steps == b.steps
