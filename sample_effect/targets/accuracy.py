"""The accuracy target's direction: sample completions on test prompts, then the REINFORCE gradient.

Kept apart from `targets.core` so the target classes load without the sampling code.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from sample_effect.engine.core import ComputeConfig
from sample_effect.errors import ConfigError, SampleEffectError
from sample_effect.objectives.reinforce import BASELINES, reinforce_gradient
from sample_effect.rollouts.groups import sample_groups


def accuracy_gradient(
    target: Any,
    model: torch.nn.Module,
    params: Mapping[str, torch.Tensor],
    compute: ComputeConfig | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """G and its statistics for an `AccuracyTarget`: sample its completions, then the REINFORCE gradient."""
    compute = compute or ComputeConfig()
    if target.tokenizer is None:
        raise SampleEffectError("the accuracy target needs the model's tokenizer (AccuracyTarget.tokenizer) to sample")
    if target.baseline not in BASELINES:
        raise SampleEffectError(f"unknown baseline '{target.baseline}'; choose one of {', '.join(BASELINES)}")
    if target.n_samples < (2 if target.baseline == "loo" else 1):
        raise ConfigError(
            "AccuracyTarget",
            f"<n_samples> must be >= {2 if target.baseline == 'loo' else 1} with baseline '{target.baseline}', "
            f"got {target.n_samples}",
        )
    prompts = list(target.prompts)
    groups = sample_groups(
        model, target.tokenizer, prompts, target.reward, target.n_samples, target.temperature,
        target.max_new_tokens, target.seed, "accuracy samples" if compute.progress else False,
    )
    vec, stats = reinforce_gradient(model, params, groups, target.baseline, target.temperature, compute.batch_size, compute.progress)
    return vec, stats
