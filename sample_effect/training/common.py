"""Pieces every trainer shares: optimiser and schedule, checkpoints, metrics files."""

from __future__ import annotations

import copy
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from sample_effect.errors import ConfigError, SampleEffectError
from sample_effect.io import atomic_open, atomic_path
from sample_effect.update.optim import OptimizerState, UpdateConfig

SCHEDULES = ("constant", "cosine")


def trainable(model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    """(name, parameter) pairs in the order given to the optimiser."""
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


# The optimiser fields trainer configs held before they took an UpdateConfig, and their names there.
FLAT_UPDATE_FIELDS = {"lr": "lr", "beta1": "beta1", "beta2": "beta2", "eps": "eps", "weight_decay": "weight_decay",
                      "max_grad_norm": "clip"}


def adamw_update(lr: float, clip: float | None = 1.0, weight_decay: float = 0.0, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8) -> UpdateConfig:
    """The trainers' default step: torch's AdamW with every hyper-parameter explicit (no weight decay, clipping at 1)."""
    return UpdateConfig("adamw", lr=lr, beta1=betas[0], beta2=betas[1], eps=eps, weight_decay=weight_decay, clip=clip)


def config_kwargs(doc: Mapping[str, Any], default: UpdateConfig) -> dict[str, Any]:
    """A trainer config's keyword arguments from its `asdict`: the nested `update`, or the old flat optimiser fields folded into one.

    Fields the document leaves out keep `default`'s values (a flat GRPO config had no betas or eps).
    """
    kwargs = {k: v for k, v in doc.items() if k != "update" and k not in FLAT_UPDATE_FIELDS}
    nested = doc.get("update") or {}
    if isinstance(nested, UpdateConfig):
        nested = asdict(nested)
    flat = {new: doc[old] for old, new in FLAT_UPDATE_FIELDS.items() if old in doc}
    kwargs["update"] = replace(default, **{**flat, **nested})
    return kwargs


def make_optimizer(model: torch.nn.Module, update: UpdateConfig) -> tuple[torch.optim.Optimizer, list[str]]:
    """`update`'s real optimiser over the trainable parameters (one group) and the parameter names in its order.

    Hyper-parameters `update` leaves as None take the rule's torch defaults, as a simulated step does.
    """
    named = trainable(model)
    hyper = OptimizerState().hyper("", update)  # no state file: explicit settings, else the rule's defaults
    opt = update.rule.torch_optimizer([p for _, p in named], update.lr, hyper)
    return opt, [n for n, _ in named]


def clip_gradients(params: Sequence[torch.nn.Parameter], update: UpdateConfig) -> None:
    """Clip the gradients of `params` to `update.clip` (as a simulated step does); nothing without clipping."""
    if update.clip is not None:
        torch.nn.utils.clip_grad_norm_(params, update.clip)


def make_schedule(opt: torch.optim.Optimizer, schedule: str, warmup: int, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup over `warmup` steps (the first step at lr / warmup), then constant or cosine to 0."""
    if schedule not in SCHEDULES:
        raise SampleEffectError(f"unknown lr schedule '{schedule}'; choose one of {', '.join(SCHEDULES)}")

    def factor(step: int) -> float:  # step = number of optimiser steps already taken
        if warmup and step < warmup:
            return (step + 1) / warmup
        if schedule == "constant":
            return 1.0
        span = max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / span)))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def save_checkpoint(
    model: torch.nn.Module, tokenizer: Any, opt: torch.optim.Optimizer, names: Sequence[str], path: str | os.PathLike, state: dict
) -> Path:
    """save_pretrained + optimizer.pt (the engine's --optimizer-state format) + trainer_state.json."""
    from sample_effect.models.loading import quiet_hf_progress

    quiet_hf_progress()
    from sample_effect.models.lora import is_peft

    p = Path(path)
    p.mkdir(parents=True, exist_ok=True)
    if is_peft(model):  # the adapter in adapter/, the merged model at the top as a plain checkpoint
        model.save_pretrained(str(p / "adapter"))
        tokenizer.save_pretrained(str(p / "adapter"))
        copy.deepcopy(model).merge_and_unload().save_pretrained(str(p))
    else:
        model.save_pretrained(str(p))
    tokenizer.save_pretrained(str(p))
    with atomic_path(p / "optimizer.pt") as tmp:
        torch.save({"optimizer": opt.state_dict(), "param_names": list(names)}, tmp)
    with atomic_open(p / "trainer_state.json") as f:
        json.dump(state, f, indent=2)
    return p


def load_optimizer_into(opt: torch.optim.Optimizer, names: Sequence[str], path: str | os.PathLike) -> None:
    """Restore an optimizer saved by `save_checkpoint`, matching parameters by name."""
    blob = torch.load(path, map_location="cpu", weights_only=True)
    if list(blob["param_names"]) != list(names):
        raise SampleEffectError(f"{path}: optimizer parameter names do not match the model's")
    opt.load_state_dict(blob["optimizer"])


class MetricsWriter:
    """Rows of metrics, rewritten atomically after each append so a crash loses nothing written."""

    def __init__(self, path: str | os.PathLike | None):
        self.path = Path(path) if path else None
        self.rows: list[dict] = []
        if self.path and self.path.suffix.lower() not in (".csv", ".jsonl"):
            raise SampleEffectError(f"metrics file must end in .csv or .jsonl, got '{self.path.name}'")

    def add(self, row: dict) -> None:
        self.rows.append(row)
        if self.path is None:
            return
        if self.path.suffix.lower() == ".csv":
            with atomic_path(self.path) as tmp:
                pd.DataFrame(self.rows).to_csv(tmp, index=False)
        else:
            with atomic_open(self.path) as f:
                f.writelines(json.dumps(r) + "\n" for r in self.rows)

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows)


def check_trainer_update(owner: str, update: UpdateConfig) -> None:
    """Raise ConfigError for a trainer config's lr or clipping, under the names its flags set (`lr`, `max_grad_norm`)."""
    lr, clip = update.lr, update.clip
    if not (lr > 0 and math.isfinite(lr)):
        raise ConfigError(owner, f"<lr> must be a positive number, got {lr}")
    if clip is not None and not clip > 0:
        raise ConfigError(owner, f"<max_grad_norm> must be positive, got {clip}")
