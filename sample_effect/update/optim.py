"""Simulated optimiser steps: the configuration of an update and the optimiser state it starts from.

`UpdateConfig` names an update rule of the registry (`sample_effect.update.rules`: SGD, Adam,
AdamW, Lion, each mirroring its optimiser and `torch.nn.utils.clip_grad_norm_` operation for
operation, so a simulated step equals a real one to rounding). Steps are *per unit learning
rate*, d = delta_theta / lr, which is what the sample effect needs (e(s) = <d(s), G>) and which
avoids the cancellation of subtracting two nearly equal parameter vectors.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from sample_effect.errors import ConfigError, SampleEffectError, literal
from sample_effect.update.rules import (
    CLIP_EPS,
    ParamHyper,
    ParamState,
    UpdateRule,
    clip_coefficients,
    get_update_rule,
    update_rules,
)

__all__ = [
    "CLIP_EPS",
    "OptimizerState",
    "ParamHyper",
    "UpdateConfig",
    "clip_coefficients",
    "load_optimizer_state",
    "state_from_state_dict",
    "state_keys_of",
]


@dataclass
class UpdateConfig:
    """How the trainer would step: optimiser, its hyper-parameters and gradient clipping.

    `optimizer` names a registered update rule (`rule`). Hyper-parameters left as None come from
    the loaded optimiser state's parameter group when there is one, else from the rule's torch
    defaults (AdamW's weight decay is 0.01, the others' 0; Lion's betas are 0.9 / 0.99).
    """

    optimizer: str = "sgd"
    lr: float = 1e-5
    beta1: float | None = None
    beta2: float | None = None
    eps: float | None = None
    weight_decay: float | None = None
    clip: float | None = None

    @property
    def rule(self) -> UpdateRule:
        """The registered update rule named by `optimizer` (SampleEffectError listing the names if none)."""
        return get_update_rule(self.optimizer)

    def validate(self) -> UpdateConfig:
        """Raise ConfigError (naming the field) on any out-of-range setting; return self."""
        get_update_rule(self.optimizer)
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError("UpdateConfig", f"<lr> must be a positive number, got {self.lr}")
        if self.clip is not None and not (math.isfinite(self.clip) and self.clip > 0):
            raise ConfigError("UpdateConfig", f"<clip> must be a positive number, got {self.clip}")
        for name in ("beta1", "beta2"):
            b = getattr(self, name)
            if b is not None and not (0.0 <= b < 1.0):
                raise ConfigError("UpdateConfig", f"<{name}> must be in [0, 1), got {b}")
        if self.eps is not None and not (math.isfinite(self.eps) and self.eps >= 0):
            raise ConfigError("UpdateConfig", f"<eps> must be >= 0, got {self.eps}")
        if self.weight_decay is not None and not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ConfigError("UpdateConfig", f"<weight_decay> must be >= 0, got {self.weight_decay}")
        return self


@dataclass
class OptimizerState:
    """Per parameter name, the optimiser state a step starts from (`ParamState`); empty means a fresh optimiser.

    A parameter without an entry starts fresh (step 0, zero tensors), as torch starts one it has
    never stepped. `groups` holds each parameter's group settings (betas, eps, weight decay).
    """

    params: dict[str, ParamState] = field(default_factory=dict)
    groups: dict[str, dict] = field(default_factory=dict)  # name -> its param group's settings

    @property
    def steps(self) -> dict[str, float]:
        """The step count of every parameter that has a state."""
        return {n: st.step for n, st in self.params.items()}

    def tensors(self, key: str) -> dict[str, torch.Tensor]:
        """The state tensor named `key` (e.g. 'exp_avg') of every parameter whose state has one."""
        return {n: st.tensors[key] for n, st in self.params.items() if key in st.tensors}

    def hyper(self, name: str, cfg: UpdateConfig) -> ParamHyper:
        """Hyper-parameters for one parameter: explicit config, else its group, else the rule's torch defaults."""
        rule = cfg.rule
        group = self.groups.get(name, {})
        betas = group.get("betas", rule.default_betas)
        return ParamHyper(
            beta1=cfg.beta1 if cfg.beta1 is not None else float(betas[0]),
            beta2=cfg.beta2 if cfg.beta2 is not None else float(betas[1]),
            eps=cfg.eps if cfg.eps is not None else float(group.get("eps", rule.default_eps)),
            weight_decay=cfg.weight_decay
            if cfg.weight_decay is not None
            else float(group.get("weight_decay", rule.default_weight_decay)),
        )

    def param_state(self, name: str) -> ParamState:
        """The state one parameter steps from (step 0 and no tensors when it has none); a copy callers may keep."""
        st = self.params.get(name)
        return ParamState() if st is None else ParamState(st.step, dict(st.tensors))


def load_optimizer_state(
    path: str | os.PathLike,
    params: Mapping[str, torch.Tensor],
    dtype: torch.dtype = torch.float32,
    model_names: Collection[str] | None = None,
    rule: UpdateRule | None = None,
) -> OptimizerState:
    """Read `{"optimizer": opt.state_dict(), "param_names": [...]}` and match its entries to `params` by name.

    `param_names[k]` names the k-th parameter in the optimiser's order (its param groups
    concatenated). Every chosen parameter must be named; a name the model does not have, a
    duplicate, or a shape mismatch is an error. A named parameter without state (never stepped)
    starts fresh, as torch would. The tensors read are `rule`'s `state_keys` (see
    `state_from_state_dict`).
    """
    p = Path(path)
    if not p.exists():
        raise ConfigError("load_optimizer_state", f"<path> file not found: {literal(p)}")
    if p.is_dir():
        raise ConfigError(
            "load_optimizer_state",
            f"<path> {literal(p)} is a directory; a transformers Trainer checkpoint directory is read with the "
            "model (sample_effect.update.hf_checkpoint.load_trainer_optimizer_state)"
        )
    try:
        with warnings.catch_warnings():  # torch warns about the pickle protocol of files it then rejects
            warnings.simplefilter("ignore")
            blob = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle / zip / weights-only errors of many types
        raise ConfigError(
            "load_optimizer_state",
            f"could not read <path> {literal(p)}: not a torch.save file of tensors and plain containers "
            f"({type(exc).__name__})"
        ) from None
    if not isinstance(blob, dict) or "optimizer" not in blob or "param_names" not in blob:
        raise SampleEffectError(f"{p}: expected a dict with keys 'optimizer' (a state_dict) and 'param_names'")
    return state_from_state_dict(blob["optimizer"], list(blob["param_names"]), params, dtype, model_names, p, rule)


def state_from_state_dict(
    sd: dict,
    names: list[str],
    params: Mapping[str, torch.Tensor],
    dtype: torch.dtype = torch.float32,
    model_names: Collection[str] | None = None,
    p: str | os.PathLike = "<optimizer state>",
    rule: UpdateRule | None = None,
) -> OptimizerState:
    """Match an optimizer state_dict to `params`, given the name of each of its parameters in order.

    `names[k]` names the k-th parameter of the state_dict (its param groups concatenated); `p`
    is where it came from, for error messages. Each stepped parameter's entry must hold `rule`'s
    `state_keys`, which are the tensors read; with no rule, those of the registered rule that
    keeps the most tensors the entry has (`state_keys_of`).
    """
    if not isinstance(sd, dict) or "state" not in sd or "param_groups" not in sd:
        raise SampleEffectError(f"{p}: 'optimizer' is not an optimizer state_dict (no 'state'/'param_groups')")
    if len(set(names)) != len(names):
        raise SampleEffectError(f"{p}: 'param_names' contains duplicates")
    order = [idx for g in sd["param_groups"] for idx in g["params"]]
    if len(order) != len(names):
        raise SampleEffectError(
            f"{p}: the optimizer has {len(order)} parameters but 'param_names' lists {len(names)}"
        )
    index_of = dict(zip(names, order))
    group_of = {idx: g for g in sd["param_groups"] for idx in g["params"]}
    for g in sd["param_groups"]:
        if g.get("amsgrad", False):
            raise SampleEffectError(f"{p}: amsgrad optimizer states are not supported")
    if model_names is not None:
        known = set(model_names)
        unknown = [n for n in names if n not in known]
        if unknown:
            raise SampleEffectError(
                f"{p}: optimizer state names {len(unknown)} parameter(s) the model does not have, e.g. '{unknown[0]}'"
            )
    missing = [n for n in params if n not in index_of]
    if missing:
        raise SampleEffectError(
            f"{p}: no optimizer state for {len(missing)} chosen parameter(s), e.g. '{missing[0]}' "
            "(names must match the model's parameter names)"
        )
    st = OptimizerState()
    for name, param in params.items():
        idx = index_of[name]
        group = group_of[idx]
        st.groups[name] = {k: v for k, v in group.items() if k != "params"}
        entry = sd["state"].get(idx, sd["state"].get(str(idx)))
        if not entry:
            continue
        keys = state_keys_of(entry, rule, f"{p}: state of '{name}'")
        tensors = {}
        for key in keys:
            t = entry[key]
            if tuple(t.shape) != tuple(param.shape):
                raise SampleEffectError(
                    f"{p}: {key} of '{name}' has shape {tuple(t.shape)}, the model's parameter {tuple(param.shape)}"
                )
            tensors[key] = t.to(device=param.device, dtype=dtype)
        step = entry.get("step", 0)
        st.params[name] = ParamState(float(step.item() if isinstance(step, torch.Tensor) else step), tensors)
    return st


def state_keys_of(entry: Mapping[str, object], rule: UpdateRule | None, where: str) -> tuple[str, ...]:
    """The state tensors to read from one state_dict entry: `rule`'s, which it must hold, else the best registered fit.

    Without a rule, the registered rule keeping the most tensors, all of them in the entry, names
    them (an Adam entry reads as Adam's, a Lion entry as Lion's); SampleEffectError when none fits.
    """
    if rule is not None:
        missing = [k for k in rule.state_keys if not isinstance(entry.get(k), torch.Tensor)]
        if missing:
            raise SampleEffectError(
                f"{where} has no {'/'.join(missing)} (not a state of the '{rule.name}' optimizer, which keeps "
                f"{', '.join(rule.state_keys) or 'no state'})"
            )
        return rule.state_keys
    fits = [r.state_keys for r in update_rules().values()
            if r.state_keys and all(isinstance(entry.get(k), torch.Tensor) for k in r.state_keys)]
    if not fits:
        kept = sorted({k for r in update_rules().values() for k in r.state_keys})
        raise SampleEffectError(
            f"{where} holds {', '.join(sorted(map(str, entry))) or 'nothing'}, none of the state a registered "
            f"optimizer keeps ({', '.join(kept)})"
        )
    return max(fits, key=len)
