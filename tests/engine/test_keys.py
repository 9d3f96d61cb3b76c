"""`settings_key` hashes the optimiser state generically: any field, any nesting, any tensor in it counts."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import pytest
import torch

from sample_effect.engine.keys import hash_value
from sample_effect.errors import SampleEffectError
from sample_effect.update.optim import OptimizerState
from sample_effect.update.rules import ParamState


@dataclass
class _PerRuleState:  # a layout unlike OptimizerState's: per-rule named tensors
    step: dict[str, float] = field(default_factory=dict)
    tensors: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)


def _digest(value: object) -> str:
    h = hashlib.sha256()
    hash_value(h, value)
    return h.hexdigest()


def test_hash_value_sees_every_tensor_of_any_layout() -> None:
    a = _PerRuleState({"w": 1.0}, {"w": {"m": torch.zeros(3), "v": torch.ones(3)}})
    same = _PerRuleState({"w": 1.0}, {"w": {"v": torch.ones(3), "m": torch.zeros(3)}})
    assert _digest(a) == _digest(same)  # mapping order does not matter
    other = _PerRuleState({"w": 1.0}, {"w": {"m": torch.zeros(3), "v": torch.full((3,), 2.0)}})
    assert _digest(a) != _digest(other)
    assert _digest(a) != _digest(_PerRuleState({"w": 2.0}, a.tensors))
    assert _digest(torch.zeros(3)) != _digest(torch.zeros(3, dtype=torch.float64))
    assert _digest(OptimizerState()) != _digest(OptimizerState(params={"w": ParamState(step=1.0)}))
    with pytest.raises(SampleEffectError, match="cannot key"):
        hash_value(hashlib.sha256(), object())
