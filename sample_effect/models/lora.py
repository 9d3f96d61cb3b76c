"""LoRA through PEFT: wrap a model so only its adapters train and get scored.

The engine scores trainable parameters only, so a PEFT-wrapped model is scored over its
adapters with no special case. Needs `pip install 'sample-effect[lora]'` (the `peft` package).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from sample_effect.errors import ConfigError, SampleEffectError


def _peft() -> Any:
    try:
        import peft
    except ImportError:
        raise SampleEffectError("LoRA needs the 'peft' package: pip install 'sample-effect[lora]'") from None
    return peft


def apply_lora(
    model: torch.nn.Module, r: int, alpha: float | None = None, targets: Sequence[str] | None = None
) -> torch.nn.Module:
    """Wrap `model` with fresh LoRA adapters (dropout 0, eval mode); targets default to PEFT's per-architecture choice."""
    if r < 1:
        raise ConfigError("apply_lora", f"<r> must be >= 1, got {r}")
    peft = _peft()
    cfg = peft.LoraConfig(
        r=r, lora_alpha=alpha if alpha is not None else 2 * r, lora_dropout=0.0,
        target_modules=list(targets) if targets else None, task_type="CAUSAL_LM",
    )
    try:
        wrapped = peft.get_peft_model(model, cfg)
    except ValueError as exc:
        raise SampleEffectError(f"could not add LoRA adapters: {exc}") from None
    wrapped.eval()
    return wrapped


def is_peft(model: torch.nn.Module) -> bool:
    """True for a PEFT-wrapped model."""
    try:
        import peft
    except ImportError:
        return False
    return isinstance(model, peft.PeftModel)


def load_adapter(path: str, base: torch.nn.Module) -> torch.nn.Module:
    """Load a saved LoRA adapter directory onto `base`, trainable, for scoring or training."""
    peft = _peft()
    model = peft.PeftModel.from_pretrained(base, path, is_trainable=True)
    model.eval()
    return model
