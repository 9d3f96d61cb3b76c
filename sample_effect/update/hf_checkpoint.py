"""Optimiser state from a `transformers.Trainer` checkpoint directory (`--optimizer-state checkpoint-500/`).

Such a directory holds `optimizer.pt`: a plain `optimizer.state_dict()` whose parameters are
integer indices, with no names. Trainer builds its optimizer from the model's trainable
parameters (`requires_grad`) in `named_parameters()` order, split into two groups
(`Trainer.create_optimizer`): first those that get weight decay
(`Trainer.get_decay_parameter_names`), then the rest with weight decay 0. The indices count
through the groups in that order, so the k-th index names the k-th parameter of
decay-names + no-decay-names.

Which parameters get decay changed between transformers versions (newer ones also exempt
`...norm.weight` parameters of RMSNorm layers), so the groupings of both rules are tried, plus one
group of all trainable parameters (a custom optimizer); the first whose group sizes and every
state tensor's shape fit the model is used. None fitting is an error that says what differs.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from sample_effect.errors import ConfigError, SampleEffectError, literal
from sample_effect.update.optim import OptimizerState, state_from_state_dict
from sample_effect.update.rules import UpdateRule, update_rules

OPTIMIZER_FILE = "optimizer.pt"
# transformers >= 4.5x: Trainer.get_decay_parameter_names
CURRENT_PATTERNS = (r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)")
# older transformers: ALL_LAYERNORM_LAYERS and ["bias", "layernorm", "rmsnorm"]
LEGACY_PATTERNS = (r"bias", r"layernorm", r"rmsnorm")


def parameter_names(model: torch.nn.Module, forbidden_types: tuple[type, ...], patterns: Sequence[str]) -> list[str]:
    """transformers.trainer_pt_utils.get_parameter_names: parameters not inside a forbidden layer or name."""
    compiled = [re.compile(p) for p in patterns]
    result: list[str] = []
    for name, child in model.named_children():
        result += [
            f"{name}.{n}"
            for n in parameter_names(child, forbidden_types, patterns)
            if not isinstance(child, forbidden_types) and not any(c.search(f"{name}.{n}".lower()) for c in compiled)
        ]
    result += [k for k in model._parameters if not any(c.search(k.lower()) for c in compiled)]
    return result


def trainer_groupings(model: torch.nn.Module) -> list[tuple[str, list[list[str]]]]:
    """Candidate (description, parameter names per group) for how a Trainer grouped this model's parameters."""
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    out = []
    for label, patterns in (("Trainer decay / no-decay groups", CURRENT_PATTERNS),
                            ("Trainer decay / no-decay groups (older transformers)", LEGACY_PATTERNS)):
        decay = set(parameter_names(model, (torch.nn.LayerNorm,), patterns))
        out.append((label, [[n for n in trainable if n in decay], [n for n in trainable if n not in decay]]))
    out.append(("one group of all trainable parameters", [trainable]))
    return out


def _fits(sd: dict, groups: list[list[str]], shapes: Mapping[str, torch.Size]) -> str | None:
    """None if the state_dict's groups and state tensors' shapes fit this grouping, else why not."""
    kept = {k for r in update_rules().values() for k in r.state_keys}  # a registered optimizer's state tensors
    sizes = [len(g["params"]) for g in sd["param_groups"]]
    if sizes != [len(g) for g in groups]:
        return f"group sizes {sizes} vs {[len(g) for g in groups]}"
    for g, names in zip(sd["param_groups"], groups):
        for idx, name in zip(g["params"], names):
            entry = sd["state"].get(idx, sd["state"].get(str(idx))) or {}
            for key, t in entry.items():
                if key in kept and isinstance(t, torch.Tensor) and tuple(t.shape) != tuple(shapes[name]):
                    return f"state {idx} has shape {tuple(t.shape)} but '{name}' has {tuple(shapes[name])}"
    return None


def load_trainer_optimizer_state(
    path: str | os.PathLike,
    model: torch.nn.Module,
    params: Mapping[str, torch.Tensor],
    dtype: torch.dtype = torch.float32,
    rule: UpdateRule | None = None,
) -> OptimizerState:
    """Read `path/optimizer.pt` (a Trainer checkpoint) and name its entries from `model`'s parameters.

    The state tensors read are `rule`'s `state_keys` (`state_from_state_dict`).
    """
    d = Path(path)
    f = d / OPTIMIZER_FILE
    if not f.is_file():
        raise ConfigError(
            "load_trainer_optimizer_state",
            f"<path> {literal(d)} is a directory without {OPTIMIZER_FILE}; expected a transformers Trainer "
            "checkpoint directory (saved with the optimizer) or a torch.save file"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sd = torch.load(f, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise SampleEffectError(f"could not read {f}: not a torch.save file of tensors ({type(exc).__name__})") from None
    if isinstance(sd, dict) and "param_names" in sd and "optimizer" in sd:  # this project's own trainers' checkpoints
        from sample_effect.update.optim import load_optimizer_state

        return load_optimizer_state(f, params, dtype, model_names={n for n, _ in model.named_parameters()}, rule=rule)
    if not isinstance(sd, dict) or "state" not in sd or "param_groups" not in sd:
        raise SampleEffectError(f"{f}: not an optimizer state_dict (no 'state'/'param_groups')")
    shapes = {n: p.shape for n, p in model.named_parameters()}
    why = []
    for label, groups in trainer_groupings(model):
        problem = _fits(sd, groups, shapes)
        if problem is None:
            names = [n for g in groups for n in g]
            return state_from_state_dict(sd, names, params, dtype, model_names=set(shapes), p=f, rule=rule)
        why.append(f"{label}: {problem}")
    raise SampleEffectError(
        f"{f} does not match the model's trainable parameters as transformers' Trainer groups them ("
        + "; ".join(why) + "); was it saved for another model, or with a custom optimizer? "
        "Use the {'optimizer': state_dict, 'param_names': [...]} format instead"
    )
