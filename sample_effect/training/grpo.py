"""GRPO: for each prompt sample G rollouts, score them, normalise rewards within the group, and
minimise the token-mean policy loss of `sample_effect.objectives.losses.grpo_loss`.

- advantages A_i = (r_i - mean r) / (std r + 1e-6) per group (unbiased std);
- zero-variance groups carry no signal: they are counted and left out of the batch, so the
  token mean runs over the tokens of the informative groups only;
- the policy's log-probs are those of the model at temperature 1 (the sampling temperature only
  shapes exploration); `inner_epochs` > 1 re-uses a batch with the PPO ratio clipped at clip_eps;
- an optional k3 KL penalty to a frozen reference model;
- every step's rollouts are dumped (prompt id, completion, reward, advantage, per-token
  log-probs) to out_dir/replay/step-XXXXX.jsonl for the token-position quantile analysis.
"""

from __future__ import annotations

import copy
import json
import os
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm

from sample_effect.data.examples import pad_sequences
from sample_effect.errors import ConfigError, SampleEffectError, literal
from sample_effect.io import atomic_open
from sample_effect.objectives.losses import grpo_loss, token_logprobs
from sample_effect.rollouts.generation import greedy_accuracy
from sample_effect.rollouts.groups import Rollout, rollout_group, set_advantages
from sample_effect.rollouts.prompts import RLPrompt
from sample_effect.training.common import (
    SCHEDULES,
    MetricsWriter,
    adamw_update,
    check_trainer_update,
    clip_gradients,
    config_kwargs,
    make_optimizer,
    make_schedule,
    save_checkpoint,
)
from sample_effect.update.optim import UpdateConfig


@dataclass
class GRPOConfig:
    """GRPO hyper-parameters (defaults sized for tiny CPU runs).

    `update` is the optimiser step (its lr is the schedule's peak): AdamW, lr 1e-5, clipping at 1 by default.
    """

    update: UpdateConfig = field(default_factory=lambda: adamw_update(1e-5))
    steps: int = 10
    prompts_per_step: int = 8
    group_size: int = 8
    temperature: float = 1.0
    max_new_tokens: int = 256
    inner_epochs: int = 1
    clip_eps: float = 0.2
    kl_coef: float = 0.0
    warmup_steps: int = 0
    schedule: str = "constant"
    eval_every: int = 0
    eval_max_new_tokens: int = 256
    seed: int = 0
    save_every: int = 0

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> GRPOConfig:
        """The config `asdict` wrote: with a nested `update`, or the old flat layout (lr, max_grad_norm, weight_decay)."""
        return cls(**config_kwargs(doc, cls().update))

    def validate(self) -> GRPOConfig:
        """Raise ConfigError (naming the field) on any out-of-range setting; return self.

        `update.lr` and `update.clip` are named `lr` and `max_grad_norm`, as the trainer's --lr and --max-grad-norm set them.
        """
        check_trainer_update("GRPOConfig", self.update)
        if self.group_size < 2:
            raise ConfigError("GRPOConfig", f"<group_size> must be >= 2 (advantages need a group), got {self.group_size}")
        if self.steps < 1 or self.prompts_per_step < 1 or self.inner_epochs < 1:
            raise ConfigError("GRPOConfig", "<steps>, <prompts_per_step> and <inner_epochs> must be >= 1")
        if self.temperature <= 0:
            raise ConfigError("GRPOConfig", f"<temperature> must be positive for GRPO rollouts, got {self.temperature}")
        if self.max_new_tokens < 1:
            raise ConfigError("GRPOConfig", f"<max_new_tokens> must be >= 1, got {self.max_new_tokens}")
        if self.schedule not in SCHEDULES:
            raise ConfigError("GRPOConfig", f"unknown <schedule> '{literal(self.schedule)}'; choose one of {', '.join(SCHEDULES)}")
        self.update.validate()
        return self


def policy_logprobs(model: torch.nn.Module, rollouts: Sequence[Rollout]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probs [B, T-1] of the rollouts' tokens under `model`, and the completion mask."""
    device = next(model.parameters()).device
    ids, mask = pad_sequences([r.ids for r in rollouts], [r.start for r in rollouts])
    ids, mask = ids.to(device), mask.to(device)
    return token_logprobs(model(input_ids=ids, use_cache=False).logits, ids), mask


def grpo_batch_loss(
    model: torch.nn.Module,
    batch: Sequence[Rollout],
    old_logprobs: torch.Tensor | None = None,
    advantages: torch.Tensor | None = None,
    clip_eps: float = 0.2,
    ref_logprobs: torch.Tensor | None = None,
    kl_coef: float = 0.0,
) -> torch.Tensor:
    """The loss `train_grpo` minimises on `batch`: `grpo_loss` token-mean over the rollouts' completion tokens.

    `old_logprobs` None is the on-policy first step (old = current log-probs detached, ratio 1);
    `advantages` None takes each rollout's `.advantage` (pass a tensor to differentiate through them).
    """
    lp, mask = policy_logprobs(model, batch)
    old = lp.detach() if old_logprobs is None else old_logprobs
    if advantages is None:
        advantages = torch.tensor([r.advantage for r in batch], dtype=lp.dtype, device=lp.device)
    return grpo_loss(lp, old, advantages, mask, clip_eps, ref_logprobs, kl_coef)


def _grpo_update(  # type: ignore[no-untyped-def]
    model: torch.nn.Module, opt, params: list[torch.nn.Parameter], groups: list[list[Rollout]], cfg: GRPOConfig,
    reference: torch.nn.Module | None,
) -> tuple[int, list[float], torch.Tensor, torch.Tensor]:
    """One GRPO step on sampled groups: advantages, then `inner_epochs` clipped optimiser steps on the informative groups.

    Returns (zero-variance groups, the losses of the inner steps, the rollouts' old log-probs and mask).
    """
    everything = [r for g in groups for r in g]
    keep_idx: list[int] = []
    zero_var = 0
    for k, g in enumerate(groups):
        if set_advantages(g):
            zero_var += 1
        else:
            keep_idx.extend(range(k * cfg.group_size, (k + 1) * cfg.group_size))
    batch = [everything[i] for i in keep_idx]
    with torch.no_grad():
        old_lp, mask = policy_logprobs(model, everything)
    losses: list[float] = []
    if batch:
        keep = torch.tensor(keep_idx, device=old_lp.device)
        width = max(int(r.ids.shape[0]) for r in batch) - 1
        old_b = old_lp[keep, :width]
        ref_lp = None
        if reference is not None and cfg.kl_coef:
            with torch.no_grad():
                ref_lp, _ = policy_logprobs(reference, batch)
        model.train()
        for _ in range(cfg.inner_epochs):
            opt.zero_grad(set_to_none=True)
            loss = grpo_batch_loss(model, batch, old_b, None, cfg.clip_eps, ref_lp, cfg.kl_coef)
            loss.backward()
            clip_gradients(params, cfg.update)
            opt.step()
            losses.append(float(loss.detach()))
        model.eval()
    return zero_var, losses, old_lp, mask


def _write_replay(path: Path, step: int, rollouts: list[Rollout], old_lp: torch.Tensor, mask: torch.Tensor) -> None:
    """The step's rollouts as replay JSONL (one line each, with the completion tokens' log-probs)."""
    with atomic_open(path) as f:
        for i, r in enumerate(rollouts):
            n_tok = int(mask[i].sum())
            lps = old_lp[i][mask[i]].tolist()[:n_tok]
            f.write(json.dumps({
                "step": step, "prompt_id": r.prompt_id, "completion": r.completion, "finished": r.finished,
                "reward": r.reward, "advantage": r.advantage, "logprobs": lps,
            }) + "\n")


@dataclass
class GRPOHooks:
    """What a GRPO run reports besides its own metrics: held-out greedy accuracy and the caller's callbacks.

    `on_eval(step, model)` adds its columns to the rows where the trainer evaluates: step 0 (before
    any update), every `eval_every` steps and the last step (e.g. a target loss to compare with a
    prediction). `on_batch(step, groups)` sees each step's rollout groups, with their advantages,
    right after the update they fed (e.g. to score the very batch a step took).
    """

    eval_prompts: Sequence[RLPrompt] | None = None
    on_eval: Callable[[int, torch.nn.Module], dict[str, float]] | None = None
    on_batch: Callable[[int, list[list[Rollout]]], None] | None = None


def train_grpo(
    model: torch.nn.Module,
    tokenizer: Any,
    prompts: Sequence[RLPrompt],
    reward: Callable[..., float],
    config: GRPOConfig,
    out_dir: str | os.PathLike | None = None,
    metrics_path: str | os.PathLike | None = None,
    reference: torch.nn.Module | None = None,
    hooks: GRPOHooks | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Run GRPO in place on `model`; returns one metrics row per step (eval columns every eval_every).

    `hooks` give the held-out prompts whose greedy accuracy is logged and the `on_eval` / `on_batch`
    callbacks (see `GRPOHooks`); `reference` is the frozen model of the KL penalty (a copy of the start by default).
    """
    cfg = config.validate()
    if not prompts:
        raise SampleEffectError("no RL prompts")
    hooks = hooks or GRPOHooks()
    eval_prompts, on_eval, on_batch = hooks.eval_prompts, hooks.on_eval, hooks.on_batch
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    opt, names = make_optimizer(model, cfg.update)
    sched = make_schedule(opt, cfg.schedule, cfg.warmup_steps, cfg.steps)
    if cfg.kl_coef and reference is None:
        reference = copy.deepcopy(model).eval()
        for p in reference.parameters():
            p.requires_grad_(False)
    metrics = MetricsWriter(metrics_path)
    out = Path(out_dir) if out_dir else None
    if out is not None:
        (out / "replay").mkdir(parents=True, exist_ok=True)
    order: list[int] = []
    t0 = time.perf_counter()
    params = [p for p in model.parameters() if p.requires_grad]

    def eval_acc() -> float:
        items = [(p.prompt, p.answer) for p in eval_prompts or []]
        return greedy_accuracy(model, tokenizer, items, reward, cfg.eval_max_new_tokens)[0]

    with tqdm(total=cfg.steps, desc="grpo", unit="step", disable=not progress) as bar:
        for step in range(1, cfg.steps + 1):
            row: dict[str, Any] = {"step": step - 1} if step == 1 and (eval_prompts or on_eval) else {}
            if row:
                if eval_prompts:
                    row["eval_accuracy"] = eval_acc()
                if on_eval is not None:
                    row.update(on_eval(0, model))
                row["elapsed_s"] = time.perf_counter() - t0
                metrics.add(row)
            while len(order) < cfg.prompts_per_step:
                order += torch.randperm(len(prompts), generator=gen).tolist()
            picked, order = order[: cfg.prompts_per_step], order[cfg.prompts_per_step :]
            model.eval()
            groups = [rollout_group(model, tokenizer, prompts[i], reward, cfg, gen) for i in picked]
            everything = [r for g in groups for r in g]
            zero_var, losses, old_lp, mask = _grpo_update(model, opt, params, groups, cfg, reference)
            if on_batch is not None:
                on_batch(step, groups)
            with warnings.catch_warnings():  # a step whose groups all had zero variance took no optimiser step
                warnings.simplefilter("ignore", UserWarning)
                sched.step()
            if out is not None:
                _write_replay(out / "replay" / f"step-{step:05d}.jsonl", step, everything, old_lp, mask)
            rewards = [r.reward for r in everything]
            row = {
                "step": step,
                "lr": sched.get_last_lr()[0],
                "reward_mean": sum(rewards) / len(rewards),
                "zero_variance_groups": zero_var,
                "groups": len(groups),
                "loss": sum(losses) / len(losses) if losses else float("nan"),
                "completion_tokens_mean": float(mask.sum(1).double().mean()),
                "finished_frac": sum(r.finished for r in everything) / len(everything),
            }
            if (cfg.eval_every and step % cfg.eval_every == 0) or step == cfg.steps:
                if eval_prompts:
                    row["eval_accuracy"] = eval_acc()
                if on_eval is not None:
                    row.update(on_eval(step, model))
            row["elapsed_s"] = time.perf_counter() - t0
            metrics.add(row)
            bar.update(1)
            bar.set_postfix(reward=f"{row['reward_mean']:.3f}", zero_var=zero_var)
            if out is not None and cfg.save_every and step % cfg.save_every == 0 and step != cfg.steps:
                save_checkpoint(model, tokenizer, opt, names, out / f"checkpoint-{step}", {"step": step, "config": asdict(cfg)})
    if out is not None:
        save_checkpoint(model, tokenizer, opt, names, out / "final", {"step": cfg.steps, "config": asdict(cfg), "metrics": metrics.rows})
    return metrics.frame()
