"""Where a multi-step RL prediction goes wrong: each real GRPO step's first-order change against the measured one.

`rl_accuracy_curve` predicts the held-out accuracy after K GRPO steps as J_0 + p * sum_t(lr_t / lr),
p being `predict_rl`'s growth rate: the expected first-order change of one step from the start
(fresh AdamW state, clipping). Along a real run theta_0 .. theta_K this module records, per step k,

    a_k = < theta_k - theta_{k-1}, G_0 >   the first-order change of the step actually taken,
                                           with the start's accuracy gradient G_0;
    J_k = J(theta_k)                       the held-out accuracy, sampled with common random numbers;

and, along the first step's line theta_0 + t d_1 (d_1 = theta_1 - theta_0), J at several t against
t a_1. Three gaps split the error of the prediction K p - (J_K - J_0):

    K p     vs  sum_k a_k            extrapolation: the Adam state after the first step, the batches
                                     drawn, the direction turning (`first_batch_predicted`, the
                                     predictor on the trainer's own first batch, equals a_1);
    sum a_k vs  J_K - J_0            linearisation along the path: curvature, G_0 going stale;
    t a_1   vs  J(theta_0 + t d_1) - J_0
                                     curvature along one step's line alone.

Every J is a sampled estimate (`sampled_accuracy`): its noise is about sqrt(J (1 - J) / (prompts x
samples)) per point, less for differences thanks to the common random numbers.

Each row also carries `accuracy_is`, J at that point estimated without sampling anew: the
completions sampled at theta_0 for J_0, reweighted by pi_theta(y|x) / pi_theta_0(y|x) and
self-normalised per prompt (`importance_accuracy`), with the effective sample share `ess`. Where
it follows the measured J, the change of accuracy along a step can be had from forward passes on
the start's own samples, curvature included.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd
import torch

from sample_effect.engine.core import ComputeConfig
from sample_effect.errors import SampleEffectError
from sample_effect.growth.rl import predict_rl
from sample_effect.growth.rl_config import RLPredictConfig
from sample_effect.growth.rl_results import RLGrowth
from sample_effect.models.loading import select_parameters
from sample_effect.objectives.reinforce import sequence_logprobs
from sample_effect.rollouts.groups import Rollout
from sample_effect.rollouts.prompts import RLPrompt
from sample_effect.rollouts.rewards import get_reward
from sample_effect.training.grpo import GRPOConfig, GRPOHooks, train_grpo
from sample_effect.validation.rl_accuracy import (
    AccuracyCurveConfig,
    Loader,
    accuracy_target,
    curve_scales,
    predict_accuracy_growth,
    sampled_accuracy_groups,
)
from sample_effect.validation.rl_curves import trainer_update

LINE = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


def _dot(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """<a, b> over the names of `a`, in float64."""
    return float(sum((a[n].double() * b[n].double()).sum() for n in a))


def group_logprobs(model: torch.nn.Module, groups: Sequence[Sequence[Rollout]], temperature: float) -> list[torch.Tensor]:
    """log pi_T(y|x) of every completion, per group, in float64 (no gradient)."""
    with torch.no_grad():
        return [sequence_logprobs(model, g, temperature).double().cpu() for g in groups]


def importance_accuracy(model: torch.nn.Module, groups: Sequence[Sequence[Rollout]], base: Sequence[torch.Tensor],
                        temperature: float) -> tuple[float, float]:
    """(mean reward under `model`, mean effective sample share) from completions sampled under other weights.

    `base` holds their log-probs under the weights they were sampled from (`group_logprobs`).
    Per prompt the rewards are averaged with self-normalised weights w_i ~ pi(y_i|x) / pi_base(y_i|x),
    so the estimate stays in [0, 1] and equals the plain mean at the base weights; the effective
    share (sum w)^2 / (n sum w^2) says how many of the samples still count (1: all).
    """
    if not groups:
        raise SampleEffectError("no groups to reweight")
    means, shares = [], []
    for g, lp0, lp in zip(groups, base, group_logprobs(model, groups, temperature)):
        w = torch.softmax(lp - lp0, 0)
        r = torch.tensor([x.reward for x in g], dtype=torch.float64)
        means.append(float((w * r).sum()))
        shares.append(float(1.0 / (w.square().sum() * len(g))))
    return float(np.mean(means)), float(np.mean(shares))


def _line_rows(name: str, model: torch.nn.Module, chosen: dict[str, torch.Tensor], first: dict[str, torch.Tensor],
               line: Sequence[float], step1: dict[str, Any], accuracy: Callable[[torch.nn.Module], dict[str, float]]) -> list[dict]:
    """J(theta_0 + t d_1) for every t of `line`, the weights restored afterwards (also on an error)."""
    rows = []
    base = {n: p.detach().clone() for n, p in chosen.items()}
    try:
        for t in line:
            with torch.no_grad():
                for n, p in chosen.items():
                    p.copy_(base[n] + t * first[n].to(p.dtype))
            rows.append({"model": name, "kind": "line", "x": float(t), "first_order": t * step1["first_order"],
                         "step_norm": t * step1["step_norm"], **accuracy(model)})
    finally:
        with torch.no_grad():
            for n, p in chosen.items():
                p.copy_(base[n])
    return rows


def _summary(name: str, df: pd.DataFrame, pred: RLGrowth, weight: float, steps: int, endpoint: float,
             stats: dict[str, float]) -> dict[str, Any]:
    """The three gaps of the module docstring, and what the prediction and the target were."""
    run, line = df[df["kind"] == "run"], df[df["kind"] == "line"]
    j0, growth = float(run["accuracy"].iloc[0]), float(pred.growth_rate)
    return {
        "name": name, "steps": steps, "start_accuracy": j0,
        "predicted_growth_per_step": growth, "predicted_growth_ci95": list(pred.growth_rate_ci95),
        "predicted_positive_effect": pred.positive_effect, "predicted_noise_effect": pred.noise_effect,
        "predicted_total_change": growth * weight,
        "predicted_total_change_replay": pred.replay.total if pred.replay is not None else None,
        "first_step_first_order": float(run["first_order"].iloc[1]) if len(run) > 1 else 0.0,
        "path_first_order": float(run["first_order"].sum()),
        "endpoint_first_order": endpoint,
        "actual_total_change": float(run["accuracy"].iloc[-1] - j0),
        "mean_step_norm": float(run["step_norm"].iloc[1:].mean()) if len(run) > 1 else 0.0,
        "actual_total_change_is": float(run["accuracy_is"].iloc[-1] - j0),
        "line": [{"t": r.x, "first_order": r.first_order, "actual_change": r.accuracy - j0,
                  "is_change": r.accuracy_is - j0, "ess": r.ess} for r in line.itertuples()],
        "target_accuracy": stats.get("accuracy"),
        # The bootstrap interval resamples the training prompts only; G_0's own sampling error is this share of |G_0|.
        "target_gradient_rel_stderr": stats.get("gradient_rel_stderr"),
    }


def grpo_step_decomposition(
    name: str,
    load: Loader,
    prompts: Sequence[RLPrompt],
    eval_prompts: Sequence[RLPrompt],
    reward: Callable[..., float] | str,
    cfg: GRPOConfig,
    curve: AccuracyCurveConfig | None = None,
    compute: ComputeConfig | None = None,
    line: Sequence[float] = LINE,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """One start: (rows of the run and of the first step's line; summary with the three gaps of the module docstring).

    The prediction and the accuracy target are made as `rl_accuracy_curve` makes them (same seeds),
    so the summary's `predicted_total_change` is the one the demo reports for these settings.
    Rows have kind "run" (step k: a_k, the step's norm, J_k, the predicted change J_k - J_0) or "line"
    (t: t a_1, J(theta_0 + t d_1)).
    """
    compute = compute or ComputeConfig()
    cfg, curve = cfg.validate(), (curve or AccuracyCurveConfig()).validate()
    if not eval_prompts:
        raise SampleEffectError("no held-out prompts for the accuracy")
    if any(not (np.isfinite(t) and t > 0) for t in line):
        raise SampleEffectError(f"line points must be positive numbers, got {list(line)}")
    reward = get_reward(reward) if isinstance(reward, str) else reward
    model, tok = load()
    chosen = select_parameters(model)
    g0 = accuracy_target(eval_prompts, reward, tok, cfg, curve).resolve(model, chosen, [], compute)
    pred = predict_accuracy_growth(model, tok, prompts, eval_prompts, reward, cfg, curve, compute, target=g0)
    G = {n: g0.vector[n] for n in chosen}

    # J by sampling (common random numbers), and by reweighting the samples of the first measurement, which is
    # the run's step 0 at theta_0.
    base: dict[str, Any] = {}

    def accuracy(m: torch.nn.Module) -> dict[str, float]:
        acc, groups = sampled_accuracy_groups(m, tok, eval_prompts, reward, curve.eval_samples, cfg.temperature,
                                              cfg.max_new_tokens, curve.eval_seed)
        if not base:
            base.update(groups=groups, lp=group_logprobs(m, groups, cfg.temperature))
        acc_is, ess = importance_accuracy(m, base["groups"], base["lp"], cfg.temperature)
        return {"accuracy": acc, "accuracy_is": acc_is, "ess": ess}

    fresh, ftok = load()
    live = select_parameters(fresh)
    prev = {n: p.detach().clone() for n, p in live.items()}
    rows: list[dict[str, Any]] = []
    first: dict[str, torch.Tensor] = {}

    def on_eval(step: int, m: torch.nn.Module) -> dict[str, float]:
        a = norm = 0.0
        if step > 0:
            d = {n: p.detach() - prev[n] for n, p in live.items()}
            a, norm = _dot(d, G), _dot(d, d) ** 0.5
            if step == 1:
                first.update(d)
            for n, p in live.items():
                prev[n].copy_(p.detach())
        acc = accuracy(m)
        rows.append({"model": name, "kind": "run", "x": step, "first_order": a, "step_norm": norm, **acc})
        return {"heldout_accuracy": acc["accuracy"]}

    batches: dict[int, list[list[Rollout]]] = {}
    keep_first = GRPOHooks(on_eval=on_eval, on_batch=lambda step, groups: batches.setdefault(step, groups) if step == 1 else None)
    train_grpo(fresh, ftok, prompts, reward, replace(cfg, eval_every=1), hooks=keep_first, progress=compute.progress)
    # <theta_K - theta_0, G_0>: the steps' a_k must add up to it (the rows' bookkeeping, checked by the tests).
    endpoint = _dot({n: p.detach() - chosen[n].detach() for n, p in live.items()}, G)
    del fresh
    live.clear()  # the trained copy is not needed past here
    if first:
        rows += _line_rows(name, model, chosen, first, line, rows[1], accuracy)
    df = pd.DataFrame(rows)
    scale, replay = curve_scales(cfg, pred)
    is_run = df["kind"] == "run"
    ks = df.loc[is_run, "x"].astype(int).to_numpy()
    df.loc[is_run, "predicted_change"] = float(pred.growth_rate) * scale[ks]
    if replay is not None:
        df.loc[is_run, "predicted_replay_change"] = replay[ks]
    summary = _summary(name, df, pred, float(scale[-1]), cfg.steps, endpoint, g0.stats)
    # The predictor on the very batch of the trainer's first step: equal to that step's a_1 (no sampling left).
    own = predict_rl(model, tok, [], reward, g0, trainer_update(cfg),
                     RLPredictConfig(prompts_per_step=len(batches[1]), n_boot=10, noise_draws=1, curvature_draws=0,
                                     clip_eps=cfg.clip_eps), groups=batches[1], compute=replace(compute, progress=False))
    summary["first_batch_predicted"] = float(own.growth.growth_rate)
    summary["first_batch_zero_variance"] = int(own.growth.zero_variance_groups)
    return df, summary
