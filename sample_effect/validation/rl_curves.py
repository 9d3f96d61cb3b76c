"""Predicted vs actual RL curves: `predict_rl`'s growth rate against real `train_grpo` runs.

For each starting checkpoint (the paper's question: which SFT initialisation makes RL grow
fastest), the prediction is made once, before training, from rollouts sampled with their own
seed: the growth of T = -(mean target loss) per GRPO step under the trainer's own update (AdamW
with its clipping, simulated by `predict_rl`: positive effect plus the first-order batch noise
term; and with the second-order term, `predicted_second_order`), accumulated over the trainer's
lr schedule. Then `train_grpo` runs from the same weights
(several seeds if asked) and the target loss is evaluated every `eval_every` steps. Rank
agreement across checkpoints compares the predicted growth with the actual slope.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd
import torch

from sample_effect.data.examples import TokenizedExample
from sample_effect.engine.core import ComputeConfig, example_loss_values
from sample_effect.errors import ConfigError
from sample_effect.growth.rl import predict_rl
from sample_effect.rollouts.prompts import RLPrompt
from sample_effect.targets.core import LossTarget
from sample_effect.training.grpo import GRPOConfig, GRPOHooks, train_grpo
from sample_effect.update.optim import UpdateConfig

Loader = Callable[[], tuple[torch.nn.Module, Any]]


def trainer_update(cfg: GRPOConfig) -> UpdateConfig:
    """The update `train_grpo` takes: `cfg.update` (by default torch's AdamW, betas 0.9/0.999, eps 1e-8, no weight decay, clipping at 1)."""
    return cfg.update


def grpo_lrs(cfg: GRPOConfig) -> list[float]:
    """The lr of every GRPO step, read off the trainer's own scheduler."""
    from sample_effect.growth.sft import schedule_lrs

    return schedule_lrs(cfg, cfg.steps)  # type: ignore[arg-type]  # same lr/schedule/warmup fields


def slope(steps: Sequence[float], values: Sequence[float]) -> float:
    """Least-squares slope of values against steps (nan with fewer than 2 distinct steps)."""
    x, y = np.asarray(steps, dtype=float), np.asarray(values, dtype=float)
    if len(np.unique(x)) < 2:
        return float("nan")
    return float(np.polyfit(x, y, 1)[0])


def rl_curve(
    name: str,
    load: Loader,
    prompts: Sequence[RLPrompt],
    reward: Callable[..., float],
    target_examples: Sequence[TokenizedExample],
    cfg: GRPOConfig,
    runs: int = 1,
    predict_seed: int = 1000,
    noise_draws: int = 256,
    compute: ComputeConfig | None = None,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """One checkpoint: (rows of step, run, actual and predicted target loss; summary record).

    `load()` returns an untrained (model, tokenizer) of the checkpoint each time: the first
    serves the prediction, each run trains its own.
    The prediction samples its rollouts with `predict_seed`, independent of the trainer's seeds
    (cfg.seed + run).
    """
    compute = compute or ComputeConfig()
    cfg = cfg.validate()
    if runs < 1:
        raise ConfigError("rl_curve", f"<runs> must be >= 1, got {runs}")
    model, tok = load()
    pred = predict_rl(
        model, tok, prompts, reward, LossTarget(target_examples), trainer_update(cfg), group_size=cfg.group_size,
        temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens, seed=predict_seed,
        prompts_per_step=cfg.prompts_per_step, clip_eps=cfg.clip_eps, compute=compute, noise_draws=noise_draws,
    ).growth
    assert pred.target_loss is not None  # a loss target resolves with its loss
    start = float(pred.target_loss)
    lrs = np.asarray(grpo_lrs(cfg))
    scale = np.concatenate([[0.0], np.cumsum(lrs / cfg.update.lr)])  # steps weighted by lr_t / lr
    growth = float(pred.growth_rate)
    growth2 = pred.growth_rate_second_order
    lo, hi = (float(v) for v in pred.growth_rate_ci95)
    del model
    rows = []
    every = cfg.eval_every or 1

    def evaluate(step: int, m: torch.nn.Module) -> dict[str, float]:
        with torch.no_grad():
            return {"target_loss": float(example_loss_values(m, target_examples).mean())}

    for run in range(runs):
        fresh, ftok = load()
        metrics = train_grpo(fresh, ftok, prompts, reward, replace(cfg, seed=cfg.seed + run, eval_every=every),
                             hooks=GRPOHooks(on_eval=evaluate), progress=compute.progress)
        evals = metrics.dropna(subset=["target_loss"]) if "target_loss" in metrics else metrics.iloc[0:0]
        for _, m in evals.iterrows():
            s = int(m["step"])
            zv = m.get("zero_variance_groups")
            rows.append({
                "model": name, "run": run, "step": s, "actual": float(m["target_loss"]),
                "predicted": start - growth * scale[s], "predicted_lo": start - hi * scale[s],
                "predicted_hi": start - lo * scale[s],
                "predicted_second_order": None if growth2 is None else start - float(growth2) * scale[s],
                "zero_variance_groups": None if zv is None or (isinstance(zv, float) and math.isnan(zv)) else int(zv),
            })
    df = pd.DataFrame(rows)
    last = df["step"].max()
    ends = df[df["step"] == last].groupby("run")["actual"].first()
    first = df[df["step"] == 0].groupby("run")["actual"].first()
    changes = (first - ends).to_numpy()  # the actual drop of the target loss (= rise of T) per run
    summary = {
        "name": name, "steps": int(last), "runs": runs, "start_loss": start,
        "predicted_growth_per_step": growth, "predicted_growth_ci95": [lo, hi],
        "predicted_positive_effect": pred.positive_effect, "predicted_noise_effect": pred.noise_effect,
        "predicted_zero_variance_fraction": pred.zero_variance_fraction,
        "predicted_total_change": growth * float(scale[last]),
        "predicted_growth_second_order": growth2,
        "predicted_total_change_second_order": None if growth2 is None else float(growth2) * float(scale[last]),
        "actual_total_change": float(changes.mean()),
        "actual_total_change_se": float(changes.std(ddof=1) / math.sqrt(runs)) if runs > 1 else None,
        "actual_growth_per_step": -slope(df["step"], df["actual"]),
        "prediction": pred.to_dict(),
    }
    return df, summary


def agreement(summaries: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Rank agreement across checkpoints of predicted growth vs actual slope (`validation.rank_agreement`)."""
    from sample_effect.validation.linearization import rank_agreement

    return rank_agreement([s["predicted_growth_per_step"] for s in summaries],
                          [s["actual_growth_per_step"] for s in summaries], "n_models")
