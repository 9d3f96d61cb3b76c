"""Re-distillation: sample from a (typically RL-trained) policy on prompts, keep the completions
the reward accepts, and write them as SFT data for fine-tuning the base model (arXiv 2505.17988)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from sample_effect.io import atomic_open
from sample_effect.rollouts.generation import sample
from sample_effect.rollouts.prompts import RLPrompt


@dataclass
class RedistillConfig:
    """How `redistill` samples: completions drawn and kept per prompt, temperature (0 = greedy), length and seed."""

    samples_per_prompt: int = 1
    keep_per_prompt: int = 1
    temperature: float = 0.0
    max_new_tokens: int = 256
    seed: int = 0


def redistill(
    model: torch.nn.Module,
    tokenizer: Any,
    prompts: Sequence[RLPrompt],
    reward: Callable[..., float],
    out_path: str | os.PathLike,
    config: RedistillConfig | None = None,
    progress: bool = True,
    stats: dict[str, Any] | None = None,
) -> list[dict]:
    """Write `{"id", "prompt", "response", "answer"}` lines of accepted completions; returns them.

    With temperature 0 (greedy) one sample per prompt is drawn whatever `samples_per_prompt` says.
    At most `keep_per_prompt` accepted completions are kept per prompt (distinct texts). Every
    sample is scored, kept or not; a `stats` dict, when given, receives the counts (`prompts`,
    `samples`, `accepted`, `accept_rate` = the policy's mean reward acceptance over all samples,
    `prompts_solved`, `kept`), which is the reward r of the policy that made the data.
    """
    cfg = config or RedistillConfig()
    gen = torch.Generator().manual_seed(cfg.seed)
    n = 1 if not cfg.temperature else cfg.samples_per_prompt
    records: list[dict] = []
    drawn = accepted = solved = 0
    for p in tqdm(prompts, desc="redistill", unit="prompt", disable=not progress):
        kept: list[str] = []
        hits = 0
        for c in sample(model, tokenizer, p.prompt, n, cfg.max_new_tokens, cfg.temperature, gen):
            drawn += 1
            if reward(p.prompt, c.text, p.answer, finished=c.finished) >= 1.0:
                hits += 1
                if c.text not in kept and len(kept) < cfg.keep_per_prompt:
                    kept.append(c.text)
        accepted += hits
        solved += hits > 0
        records += [{"id": p.id, "prompt": p.prompt, "response": t, "answer": p.answer} for t in kept]
    with atomic_open(out_path) as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    if stats is not None:
        stats.update(prompts=len(prompts), samples=drawn, accepted=accepted, accept_rate=accepted / max(drawn, 1),
                     prompts_solved=solved, kept=len(records))
    return records
