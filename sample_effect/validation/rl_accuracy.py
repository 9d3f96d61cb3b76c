"""Predicted vs actual RL accuracy curves: which SFT start makes GRPO grow fastest, and how fast.

For each starting checkpoint the prediction is made once, before training: `predict_rl` with
the accuracy target (G = grad of the expected reward on held-out prompts, REINFORCE from sampled
completions) and the trainer's own update (AdamW with clipping), so the growth rate is the
first-order change of held-out accuracy per GRPO step, accumulated over the lr schedule. Then
`train_grpo` runs from the same weights and the held-out accuracy is measured every
`eval_every` steps as the mean reward of `eval_samples` completions per held-out prompt, sampled
at the training temperature with one fixed seed at every evaluation (common random numbers, so
the curve's step-to-step noise is small). The predicted curve starts from the measured step-0
accuracy; what is compared is the slope.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from sample_effect.engine.core import ComputeConfig
from sample_effect.engine.vectors import TargetVector
from sample_effect.errors import SampleEffectError
from sample_effect.growth.rl import predict_rl
from sample_effect.growth.rl_config import RLPredictConfig
from sample_effect.growth.rl_results import RLGrowth
from sample_effect.rollouts.groups import Rollout, sample_groups
from sample_effect.rollouts.prompts import RLPrompt
from sample_effect.rollouts.rewards import get_reward
from sample_effect.targets.core import AccuracyTarget
from sample_effect.training.grpo import GRPOConfig, GRPOHooks, train_grpo
from sample_effect.validation.rl_curves import grpo_lrs, slope, trainer_update

Loader = Callable[[], tuple[torch.nn.Module, Any]]


@dataclass
class AccuracyCurveConfig:
    """How the held-out accuracy is predicted and measured (see the module docstring)."""

    eval_samples: int = 8  # completions per held-out prompt at each evaluation
    target_samples: int = 8  # completions per held-out prompt for the accuracy target's gradient
    eval_seed: int = 5000
    predict_seed: int = 1000
    runs: int = 1
    noise_draws: int = 64
    replay_runs: int = 16  # simulated runs of the whole schedule on the frozen gradients (`growth.rl_batches.replay_path`)

    def validate(self) -> AccuracyCurveConfig:
        """Raise SampleEffectError on an out-of-range setting; return self."""
        for name in ("eval_samples", "runs", "noise_draws", "replay_runs"):
            if getattr(self, name) < 1:
                raise SampleEffectError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.target_samples < 2:
            raise SampleEffectError(f"target_samples must be >= 2 (leave-one-out baseline), got {self.target_samples}")
        return self


def sampled_accuracy(
    model: torch.nn.Module, tokenizer: Any, prompts: Sequence[RLPrompt], reward: Callable[..., float] | str,
    n: int, temperature: float, max_new_tokens: int, seed: int,
) -> float:
    """Mean reward of `n` completions per prompt sampled at `temperature` (per-prompt generators seeded by `seed`)."""
    return sampled_accuracy_groups(model, tokenizer, prompts, reward, n, temperature, max_new_tokens, seed)[0]


def sampled_accuracy_groups(
    model: torch.nn.Module, tokenizer: Any, prompts: Sequence[RLPrompt], reward: Callable[..., float] | str,
    n: int, temperature: float, max_new_tokens: int, seed: int,
) -> tuple[float, list[list[Rollout]]]:
    """`sampled_accuracy` and the completions behind it (e.g. to reweight them at other weights later)."""
    with torch.no_grad():
        groups = sample_groups(model, tokenizer, prompts, reward, n, temperature, max_new_tokens, seed, progress=False)
    return float(np.mean([r.reward for g in groups for r in g])), groups


def curve_scales(cfg: GRPOConfig, pred: RLGrowth) -> tuple[np.ndarray, np.ndarray | None]:
    """Per step k = 0..steps: (sum of lr_t / lr over the first k steps, the replay's cumulative change or None).

    The first times the growth rate is the predicted change after k steps; the second is the
    replayed prediction's (`predict_accuracy_growth`'s `replay`), when it was computed.
    """
    scale = np.concatenate([[0.0], np.cumsum(np.asarray(grpo_lrs(cfg)) / cfg.update.lr)])
    per_step = pred.replay.per_step if pred.replay is not None else None
    return scale, (np.concatenate([[0.0], np.cumsum(per_step)]) if per_step else None)


def accuracy_target(eval_prompts: Sequence[RLPrompt], reward: Callable[..., float], tokenizer: Any, cfg: GRPOConfig,
                    curve: AccuracyCurveConfig) -> AccuracyTarget:
    """The held-out accuracy target of the curves: `curve.target_samples` completions per prompt at the trainer's
    temperature and length, seeded by `curve.predict_seed + 1`."""
    return AccuracyTarget(eval_prompts, reward, tokenizer, n_samples=curve.target_samples, temperature=cfg.temperature,
                          seed=curve.predict_seed + 1, max_new_tokens=cfg.max_new_tokens)


def predict_accuracy_growth(
    model: torch.nn.Module, tokenizer: Any, prompts: Sequence[RLPrompt], eval_prompts: Sequence[RLPrompt],
    reward: Callable[..., float], cfg: GRPOConfig, curve: AccuracyCurveConfig, compute: ComputeConfig,
    target: TargetVector | None = None,
) -> RLGrowth:
    """`predict_rl`'s growth of held-out accuracy under `train_grpo` with `cfg`, as the curves predict it.

    The accuracy target samples `curve.target_samples` completions per held-out prompt (seed
    `curve.predict_seed + 1`), the rollouts are seeded by `curve.predict_seed`, the update is the
    trainer's (`trainer_update`), and its `replay` replays `cfg`'s whole lr schedule on the
    frozen gradients (`growth.rl_batches.replay_path`, `curve.replay_runs` batch orders). `target`, if
    given, is that target already resolved at these weights.
    """
    goal = target if target is not None else accuracy_target(eval_prompts, reward, tokenizer, cfg, curve)
    settings = RLPredictConfig(group_size=cfg.group_size, temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens,
                               seed=curve.predict_seed, prompts_per_step=cfg.prompts_per_step, clip_eps=cfg.clip_eps,
                               noise_draws=curve.noise_draws, curvature_draws=0, horizon_lrs=tuple(grpo_lrs(cfg)),
                               replay_runs=curve.replay_runs)
    return predict_rl(model, tokenizer, prompts, reward, goal, trainer_update(cfg), settings, compute=compute).growth


def rl_accuracy_curve(
    name: str,
    load: Loader,
    prompts: Sequence[RLPrompt],
    eval_prompts: Sequence[RLPrompt],
    reward: Callable[..., float] | str,
    cfg: GRPOConfig,
    curve: AccuracyCurveConfig | None = None,
    compute: ComputeConfig | None = None,
    out_dir: str | os.PathLike | None = None,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """One checkpoint: (rows of step, run, actual and predicted held-out accuracy; summary record).

    `load()` returns an untrained (model, tokenizer) of the checkpoint each time: the first serves
    the prediction, each run trains its own (trainer seeds cfg.seed + run). With `out_dir` each
    run's GRPO checkpoint is kept under out_dir/run-R (model, tokenizer, optimizer state).
    """
    compute = compute or ComputeConfig()
    cfg, curve = cfg.validate(), (curve or AccuracyCurveConfig()).validate()
    reward = get_reward(reward) if isinstance(reward, str) else reward  # the trainer takes the function
    if not eval_prompts:
        raise SampleEffectError("no held-out prompts for the accuracy curve")
    model, tok = load()
    pred = predict_accuracy_growth(model, tok, prompts, eval_prompts, reward, cfg, curve, compute)
    del model
    scale, replay = curve_scales(cfg, pred)
    growth = float(pred.growth_rate)
    lo, hi = (float(v) for v in pred.growth_rate_ci95)

    def evaluate(step: int, m: torch.nn.Module) -> dict[str, float]:
        acc = sampled_accuracy(m, tok, eval_prompts, reward, curve.eval_samples, cfg.temperature, cfg.max_new_tokens,
                               curve.eval_seed)
        return {"heldout_accuracy": acc}

    frames = []
    for run in range(curve.runs):
        fresh, ftok = load()
        run_dir = Path(out_dir) / f"run-{run}" if out_dir is not None else None
        metrics = train_grpo(fresh, ftok, prompts, reward, replace(cfg, seed=cfg.seed + run, eval_every=cfg.eval_every or 1),
                             out_dir=run_dir, hooks=GRPOHooks(on_eval=evaluate), progress=compute.progress)
        m = metrics.dropna(subset=["heldout_accuracy"])[["step", "heldout_accuracy", "zero_variance_groups"]].copy()
        m["run"] = run
        frames.append(m)
    df = pd.concat(frames, ignore_index=True).rename(columns={"heldout_accuracy": "actual"})
    start = float(df[df["step"] == 0]["actual"].mean())
    steps = df["step"].astype(int).to_numpy()
    df["predicted"] = start + growth * scale[steps]
    df["predicted_lo"] = start + lo * scale[steps]
    df["predicted_hi"] = start + hi * scale[steps]
    if replay is not None:
        df["predicted_replay"] = start + replay[steps]
    df.insert(0, "model", name)
    summary = _summary(name, df, pred, growth, (lo, hi), float(scale[int(df["step"].max())]), curve.runs)
    zv = df["zero_variance_groups"].dropna()
    summary["train_zero_variance_fraction"] = float(zv.mean() / cfg.prompts_per_step) if len(zv) else None
    return df, summary


def _summary(name: str, df: pd.DataFrame, pred: RLGrowth, growth: float, ci: tuple[float, float],
             weight: float, runs: int) -> dict[str, Any]:
    """Predicted and actual change of held-out accuracy over the run, per start."""
    last = int(df["step"].max())
    first = df[df["step"] == 0].groupby("run")["actual"].first()
    ends = df[df["step"] == last].groupby("run")["actual"].first()
    changes = (ends - first).to_numpy()
    replay = pred.replay
    return {
        "name": name, "steps": last, "runs": runs,
        "start_accuracy": float(first.mean()),
        "predicted_growth_per_step": growth, "predicted_growth_ci95": list(ci),
        "predicted_positive_effect": pred.positive_effect, "predicted_noise_effect": pred.noise_effect,
        "predicted_zero_variance_fraction": pred.zero_variance_fraction,
        "predicted_total_change": growth * weight,
        "predicted_total_change_ci95": [ci[0] * weight, ci[1] * weight],
        "predicted_total_change_replay": replay.total if replay is not None else None,
        "predicted_replay_runs_95": replay.total_runs_95 if replay is not None else None,
        # Accuracy lives in [0, 1]: a predicted end outside it is more than the run can move, so the
        # first-order picture cannot hold over the whole run (docs/experiments.md, Q2e).
        "predicted_leaves_range": not 0.0 <= float(first.mean()) + growth * weight <= 1.0,
        "actual_total_change": float(changes.mean()),
        "actual_total_change_se": float(changes.std(ddof=1) / math.sqrt(runs)) if runs > 1 else None,
        "actual_growth_per_step": slope(df["step"], df["actual"]),
        "prediction": pred.to_dict(),
    }
