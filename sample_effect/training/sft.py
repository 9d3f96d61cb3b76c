"""Supervised fine-tuning (AdamW unless `SFTConfig.update` names another rule) on the engine's loss: the mean over a batch of example losses.

A batch of one example therefore takes exactly the step the engine simulates for that example
(`tests/training/test_trainers.py` checks it), so predicted and actual curves are comparable.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm

from sample_effect.data.examples import TokenizedExample
from sample_effect.engine.core import check_lengths, collate, example_loss_values
from sample_effect.errors import ConfigError, SampleEffectError, literal
from sample_effect.objectives.losses import example_losses, sft_sequence_loss
from sample_effect.rollouts.generation import greedy_accuracy
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
class SFTConfig:
    """SFT hyper-parameters. `max_steps` (if set) overrides `epochs`; eval_every=0 evaluates at the end only.

    `update` is the optimiser step (its lr is the schedule's peak): AdamW, lr 1e-4, clipping at 1 by default.
    """

    update: UpdateConfig = field(default_factory=lambda: adamw_update(1e-4))
    schedule: str = "constant"
    warmup_steps: int = 0
    batch_size: int = 8
    grad_accum: int = 1
    epochs: float = 1.0
    max_steps: int | None = None
    seed: int = 0
    eval_every: int = 0
    eval_max_new_tokens: int = 256
    save_every: int = 0
    eval_steps: tuple[int, ...] = ()  # extra steps to evaluate at besides every eval_every (e.g. (1,): the first step)

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> SFTConfig:
        """The config `asdict` wrote: with a nested `update`, or the old flat layout (lr, beta1, beta2, eps, weight_decay, max_grad_norm)."""
        kwargs = config_kwargs(doc, cls().update)
        if "eval_steps" in kwargs:  # a JSON list back to the tuple
            kwargs["eval_steps"] = tuple(kwargs["eval_steps"])
        return cls(**kwargs)

    def validate(self) -> SFTConfig:
        """Raise ConfigError (naming the field) on any out-of-range setting; return self.

        `update.lr` and `update.clip` are named `lr` and `max_grad_norm`, as the trainer's --lr and --max-grad-norm set them.
        """
        check_trainer_update("SFTConfig", self.update)
        if self.batch_size < 1 or self.grad_accum < 1:
            raise ConfigError("SFTConfig", "<batch_size> and <grad_accum> must be >= 1")
        if self.max_steps is None and not self.epochs > 0:
            raise ConfigError("SFTConfig", f"<epochs> must be positive, got {self.epochs}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError("SFTConfig", f"<max_steps> must be >= 1, got {self.max_steps}")
        if any(int(s) < 1 for s in self.eval_steps):
            raise ConfigError("SFTConfig", f"<eval_steps> must be steps >= 1, got {list(self.eval_steps)}")
        if self.schedule not in SCHEDULES:
            raise ConfigError("SFTConfig", f"unknown <schedule> '{literal(self.schedule)}'; choose one of {', '.join(SCHEDULES)}")
        self.update.validate()
        return self


def batch_loss(model: torch.nn.Module, batch: Sequence[TokenizedExample]) -> torch.Tensor:
    """Mean example loss over a batch (each example: mean of its responses' response-token CE)."""
    ids, mask, owners = collate(batch, next(model.parameters()).device)
    seq = sft_sequence_loss(model(input_ids=ids, use_cache=False).logits, ids, mask)
    return example_losses(seq, owners, len(batch)).mean()


def evaluate_accuracy(
    model: torch.nn.Module,
    tokenizer: Any,
    prompts: Sequence[tuple[str, str]],
    reward: Callable[..., float],
    max_new_tokens: int,
    bar: Any = None,
    desc: str = "evaluating",
) -> float:
    """Mean reward of greedy completions, one prompt at a time, writing 'DESC k/n puzzles' on `bar` (a tqdm) as it goes."""
    scores: list[float] = []
    for k, item in enumerate(prompts):
        if bar is not None:
            bar.set_description_str(f"{desc} {k}/{len(prompts)} puzzles")
        score, _ = greedy_accuracy(model, tokenizer, [item], reward, max_new_tokens)
        scores.append(score)
    if bar is not None:
        bar.set_description_str(f"{desc} {len(prompts)}/{len(prompts)} puzzles")
    return sum(scores) / len(scores) if scores else float("nan")


def train_sft(
    model: torch.nn.Module,
    tokenizer: Any,
    train: Sequence[TokenizedExample],
    config: SFTConfig,
    out_dir: str | os.PathLike | None = None,
    eval_examples: Sequence[TokenizedExample] | None = None,
    eval_prompts: Sequence[tuple[str, str]] | None = None,
    reward: Callable[..., float] | None = None,
    metrics_path: str | os.PathLike | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Fine-tune `model` in place; returns one metrics row per evaluation (step 0 included).

    eval_examples give `eval_loss`; eval_prompts ((prompt, answer) pairs) with `reward` give
    `eval_accuracy` of greedy completions. Checkpoints (model, tokenizer, optimizer.pt in the
    engine's format, trainer_state.json) go to out_dir/checkpoint-STEP and out_dir/final.
    """
    cfg = config.validate()
    if not train:
        raise SampleEffectError("the training set is empty")
    check_lengths(model, train)
    torch.manual_seed(cfg.seed)
    per_step = cfg.batch_size * cfg.grad_accum
    steps_per_epoch = math.ceil(len(train) / per_step)
    total = cfg.max_steps if cfg.max_steps is not None else max(1, math.ceil(cfg.epochs * steps_per_epoch))
    opt, names = make_optimizer(model, cfg.update)
    sched = make_schedule(opt, cfg.schedule, cfg.warmup_steps, total)
    metrics = MetricsWriter(metrics_path)
    out = Path(out_dir) if out_dir else None
    t0 = time.perf_counter()

    def evaluate(step: int, train_loss: float | None, bar: Any) -> None:
        row: dict[str, Any] = {"step": step, "epoch": step / steps_per_epoch, "lr": sched.get_last_lr()[0], "train_loss": train_loss}
        model.eval()
        if eval_examples:
            bar.set_description_str(f"sft: evaluating the loss on {len(eval_examples)} examples (step {step})")
            row["eval_loss"] = float(example_loss_values(model, eval_examples).mean())
        if eval_prompts and reward is not None:
            row["eval_accuracy"] = evaluate_accuracy(model, tokenizer, eval_prompts, reward, cfg.eval_max_new_tokens,
                                                     bar, f"sft: evaluating (step {step})")
        bar.set_description_str("sft")
        row["elapsed_s"] = time.perf_counter() - t0
        metrics.add(row)

    def state(step: int) -> dict:
        return {"step": step, "config": asdict(cfg), "metrics": metrics.rows}

    order: list[int] = []
    gen = torch.Generator().manual_seed(cfg.seed)
    running: list[float] = []
    with tqdm(total=total, desc="sft", unit="step", disable=not progress) as bar:
        evaluate(0, None, bar)
        for step in range(1, total + 1):
            model.train()
            opt.zero_grad(set_to_none=True)
            step_loss = 0.0
            for _ in range(cfg.grad_accum):
                if len(order) < cfg.batch_size:
                    order += torch.randperm(len(train), generator=gen).tolist()
                idx, order = order[: cfg.batch_size], order[cfg.batch_size :]
                loss = batch_loss(model, [train[i] for i in idx]) / cfg.grad_accum
                loss.backward()
                step_loss += float(loss.detach())
            clip_gradients([p for p in model.parameters() if p.requires_grad], cfg.update)
            opt.step()
            sched.step()
            running.append(step_loss)
            bar.update(1)
            bar.set_postfix(loss=f"{step_loss:.4f}")
            if (cfg.eval_every and step % cfg.eval_every == 0) or step == total or step in cfg.eval_steps:
                evaluate(step, sum(running) / len(running), bar)
                running = []
            if out is not None and cfg.save_every and step % cfg.save_every == 0 and step != total:
                bar.set_description_str(f"sft: saving checkpoint-{step}")
                save_checkpoint(model, tokenizer, opt, names, out / f"checkpoint-{step}", state(step))
                bar.set_description_str("sft")
        model.eval()
        if out is not None:
            bar.set_description_str("sft: saving final")
            save_checkpoint(model, tokenizer, opt, names, out / "final", state(total))
            bar.set_description_str("sft")
    return metrics.frame()
