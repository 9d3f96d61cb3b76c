"""Effects summed over the checkpoints of a real training run (TracIn-style, with the trainer's own optimiser).

An effect at one checkpoint is a first-order statement about one step from there. Over a whole
fine-tune the weights, the target's gradient and the optimiser's moments all move, so the effect
of an example on the run is closer to the sum over the run's steps of its effect at each step
(Pruthi et al. 2020, TracIn, for SGD: sum_k lr_k <g_k(s), g_k(target)>). Here every checkpoint
contributes lr_k * e_k(s), where e_k is the sample effect under the trainer's update rule, with
the optimiser state saved at that checkpoint (AdamW moments included, as LESS, Xia et al. 2024,
uses Adam-preconditioned gradients), toward the target resolved at that checkpoint's weights.

`run_checkpoints` reads the checkpoints a `train-sft` / `train_sft` run saved (`save_every`);
`trajectory_effect_matrix` sums the per-checkpoint effect matrices.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sample_effect.data.examples import TokenizedExample
from sample_effect.engine.core import ComputeConfig
from sample_effect.errors import SampleEffectError
from sample_effect.targets.core import Target
from sample_effect.update.optim import UpdateConfig


@dataclass(frozen=True)
class Checkpoint:
    """One point of a run: its weights directory, the optimiser state file (None: fresh), the lr of the next step."""

    path: str
    optimizer_state: str | None
    lr: float
    step: int


def run_checkpoints(run_dir: str | os.PathLike, base: str | os.PathLike | None = None,
                    lr: float | None = None) -> list[Checkpoint]:
    """The checkpoints a run saved under `run_dir` (checkpoint-STEP with optimizer.pt), in step order.

    `base` (the run's starting weights, fresh optimiser state) is put first when given, at the lr
    `lr` (the first step's). The lr of a saved checkpoint is read from its optimizer.pt (the lr
    the next step would take). `final/` is left out: no step of the run was taken from it.
    """
    d = Path(run_dir)
    found = []
    for p in d.glob("checkpoint-*"):
        m = re.fullmatch(r"checkpoint-(\d+)", p.name)
        if m and (p / "optimizer.pt").exists():
            found.append((int(m.group(1)), p))
    if not found and base is None:
        raise SampleEffectError(f"{d} holds no checkpoint-STEP directory with an optimizer.pt (train with save_every)")
    out = []
    if base is not None:
        if lr is None:
            raise SampleEffectError("the base checkpoint needs the lr of the run's first step")
        out.append(Checkpoint(str(base), None, float(lr), 0))
    for step, p in sorted(found):
        blob = torch.load(p / "optimizer.pt", map_location="cpu", weights_only=True)
        groups = blob["optimizer"]["param_groups"]
        out.append(Checkpoint(str(p), str(p / "optimizer.pt"), float(groups[0]["lr"]), step))
    return out


def trajectory_effect_matrix(
    checkpoints: Sequence[Checkpoint],
    load: Callable[[str], tuple[torch.nn.Module, Any]],
    examples: Sequence[TokenizedExample],
    targets: Sequence[Target],
    update: UpdateConfig,
    params: str | None = None,
    compute: ComputeConfig | None = None,
    say: Callable[[str], None] | None = None,
) -> np.ndarray:
    """[n, T]: sum over checkpoints of lr_k times the effect matrix at checkpoint k (its weights, its optimiser state).

    `load(path)` returns (model, tokenizer) for a checkpoint directory; `targets` are re-resolved
    at every checkpoint. The result is in units of (lr x effect), i.e. a predicted first-order change
    of each target summed along the run.
    """
    from sample_effect.models.loading import select_parameters
    from sample_effect.scoring.effects import resolve_state
    from sample_effect.scoring.matrix import compute_effect_matrix

    if not checkpoints:
        raise SampleEffectError("no checkpoints to sum effects over")
    total: np.ndarray | None = None
    for k, ck in enumerate(checkpoints):
        model, _ = load(ck.path)
        chosen = select_parameters(model, params)
        state = (resolve_state(model, chosen, update, ck.optimizer_state)
                 if ck.optimizer_state and update.rule.needs_state else None)
        part = ck.lr * compute_effect_matrix(model, chosen, examples, targets, update, state, compute)
        total = part if total is None else total + part
        if say:
            say(f"checkpoint {k + 1}/{len(checkpoints)} (step {ck.step}, lr {ck.lr:g}) scored")
    assert total is not None
    return total
