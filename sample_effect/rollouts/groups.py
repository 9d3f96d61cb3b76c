"""GRPO groups sampled from a policy: G rollouts per prompt with rewards and advantages, as `train_grpo` samples them.

Each prompt has its own CPU generator seeded by (seed, prompt index), so two checkpoints sampled
with one seed get common random numbers, and prompts split over torchrun ranks get exactly the
rollouts one process would.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from tqdm.auto import tqdm

from sample_effect.errors import ConfigError, SampleEffectError
from sample_effect.models.loading import position_limit
from sample_effect.objectives.losses import grpo_advantages
from sample_effect.rollouts.generation import prompt_ids, sample
from sample_effect.rollouts.prompts import RLPrompt
from sample_effect.rollouts.rewards import checked_reward, get_reward


class SamplingSettings(Protocol):
    """How a group is sampled: completions per prompt, temperature and length (a `GRPOConfig` is one)."""

    group_size: int
    temperature: float
    max_new_tokens: int


@dataclass(frozen=True)
class GroupSampling:
    """The `SamplingSettings` of `sample_groups`: G completions per prompt at a temperature, up to a length."""

    group_size: int
    temperature: float
    max_new_tokens: int


@dataclass
class Rollout:
    """One sampled completion of a prompt: its tokens, text, reward and (once set) group-normalised advantage."""

    prompt_id: str
    prompt: str
    ids: torch.Tensor  # prompt + completion tokens
    start: int  # first completion token
    completion: str
    finished: bool
    reward: float
    advantage: float = 0.0


def rollout_group(
    model: torch.nn.Module, tokenizer: Any, p: RLPrompt, reward: Callable[..., float], cfg: SamplingSettings, gen: torch.Generator
) -> list[Rollout]:
    """G sampled completions of one prompt with their rewards."""
    pids = prompt_ids(tokenizer, p.prompt)
    comps = sample(model, tokenizer, p.prompt, cfg.group_size, cfg.max_new_tokens, cfg.temperature, gen)
    out = []
    for c in comps:
        r = reward(p.prompt, c.text, p.answer, finished=c.finished)
        out.append(Rollout(p.id, p.prompt, torch.tensor(pids + c.token_ids), len(pids), c.text, c.finished, r))
    return out


def set_advantages(group: Sequence[Rollout]) -> bool:
    """Set each rollout's group-normalised advantage (`grpo_advantages`); True if the group has zero variance.

    A zero-variance group (all rewards equal) has zero advantages; `train_grpo` leaves it out of the batch.
    """
    adv = grpo_advantages(torch.tensor([[r.reward for r in group]], dtype=torch.float64))[0]
    for r, a in zip(group, adv.tolist()):
        r.advantage = a
    return all(r.reward == group[0].reward for r in group)


def prompt_generator(seed: int, index: int) -> torch.Generator:
    """The CPU generator of prompt `index` under `seed`: independent streams per prompt, reproducible anywhere."""
    state = np.random.SeedSequence([seed, index]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def sample_groups(
    model: torch.nn.Module,
    tokenizer: Any,
    prompts: Sequence[RLPrompt],
    reward: Callable[..., float] | str,
    group_size: int,
    temperature: float = 1.0,
    max_new_tokens: int = 256,
    seed: int = 0,
    progress: bool | str = True,
    first_index: int = 0,
) -> list[list[Rollout]]:
    """`group_size` rollouts per prompt, sampled as `train_grpo` samples them, with rewards and GRPO advantages.

    `progress` False hides the progress bar, True shows one labelled "rollouts", a string shows
    one with that label.

    Prompt k (counted from `first_index`) has its own CPU generator seeded by (seed, k)
    (`prompt_generator`), so the same seed on two checkpoints gives common random numbers (a
    fairer side-by-side comparison) and a block of prompts sampled on one torchrun rank gets
    exactly the rollouts a single process would.
    """
    if group_size < 1:
        raise SampleEffectError(f"the number of samples per prompt must be >= 1, got {group_size}")
    if not (temperature > 0 and math.isfinite(temperature)):
        raise SampleEffectError(f"the sampling temperature must be positive, got {temperature}")
    if max_new_tokens < 1:
        raise ConfigError("sample_groups", f"<max_new_tokens> must be >= 1, got {max_new_tokens}")
    if not prompts:
        raise SampleEffectError("no RL prompts")
    if getattr(tokenizer, "eos_token_id", None) is None:
        raise SampleEffectError("the tokenizer has no EOS token, so no sampled completion can finish; use one that defines eos_token")
    fn = get_reward(reward) if isinstance(reward, str) else checked_reward(reward, getattr(reward, "__name__", "reward"))
    limit = position_limit(model)
    cfg = GroupSampling(group_size=group_size, temperature=temperature, max_new_tokens=max_new_tokens)
    groups = []
    desc = progress if isinstance(progress, str) else "rollouts"
    for k, p in enumerate(tqdm(prompts, desc=desc, unit="prompt", disable=not progress, leave=False)):
        if limit and len(prompt_ids(tokenizer, p.prompt)) >= limit:
            raise SampleEffectError(f"prompt '{p.id}' fills the model's {limit} positions; no room to sample a completion")
        group = rollout_group(model, tokenizer, p, fn, cfg, prompt_generator(seed, first_index + k))
        set_advantages(group)
        groups.append(group)
    return groups


def completion_tokens(rollout: Rollout) -> int:
    """Completion tokens of a rollout (the positions its loss averages over)."""
    return int(rollout.ids.shape[0]) - rollout.start


