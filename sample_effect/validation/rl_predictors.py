"""Every predictor of a start's RL growth, from one set of samples at the start's weights.

Sample-effect predictors (`predict_rl` on the same training rollouts, with the trainer's update):

- `sample-effect accuracy`: G = the REINFORCE gradient of held-out accuracy. Its 95% interval
  covers both noises: the training prompts' (predict-rl's own interval) and the held-out prompts'.
  The growth is linear in G, lr <V, G> with V the expected trainer step (`expected_step`), and G the
  mean of one estimate G_j per held-out prompt, so the per-prompt contributions c_j = lr <V, G_j>
  average to the growth and their standard error over prompts, sd(c) / sqrt(M), is the target's
  noise. The two independent standard errors add in quadrature.
- `sample-effect direction`: G = a fixed direction d (the paper's protocol), exact, no target noise.
- `sample-effect loss`: G = -grad of the mean held-out loss of correct solutions; the target's noise
  by the same per-example split.

Look-ahead predictors (a curve that can bend): the target measured at theta_0 + t lr V for a few t,
no training, and the least-squares slope over t, at the same points as the runs are measured.
Accuracy stays in [0, 1] along that line and curvature shows.

Baselines (no gradient at all): greedy and sampled held-out accuracy, pass@k, the share of training
prompts with mixed outcomes, learnability (mean p(1-p) over training prompts), and minus the held-out
loss of correct solutions (lower loss, higher score). Each has a standard error over its prompts.

Every predictor is a `PredictorValue`; higher means "GRPO grows this start faster".
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import torch

from sample_effect.engine.core import ComputeConfig
from sample_effect.engine.vectors import TargetVector
from sample_effect.growth.rl import predict_rl
from sample_effect.growth.rl_config import RLPredictConfig
from sample_effect.growth.rl_warnings import RLPredictionWarning
from sample_effect.growth.trajectory import vector_dot
from sample_effect.models.loading import select_parameters
from sample_effect.objectives.reinforce import reinforce_gradient
from sample_effect.rollouts.generation import greedy_accuracy
from sample_effect.rollouts.groups import sample_groups
from sample_effect.rollouts.prompts import RLPrompt
from sample_effect.targets.core import LossTarget, resolve_target
from sample_effect.training.grpo import GRPOConfig
from sample_effect.validation.rl_curves import slope
from sample_effect.validation.rl_measure import GrowthProbe

BASELINES = ("greedy accuracy", "sampled accuracy", "pass@k", "mixed-outcome share", "learnability p(1-p)",
             "-held-out loss")


@dataclass
class PredictorValue:
    """One predictor's value for one start, its standard error (0: exact; nan: unknown) and what it is."""

    name: str
    value: float
    se: float
    kind: str  # "sample-effect", "look-ahead" or "baseline"
    measurement: str | None = None  # the measurement it predicts in its own units (None: a score for any)
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class PredictSettings:
    """How the predictions sample: training rollouts (seed), held-out samples for the accuracy target and the
    baselines (seed + 1), the look-ahead's evaluations (seed + 2), batch draws and the look-ahead points."""

    seed: int = 1000
    target_samples: int = 8
    noise_draws: int = 64
    lookahead: tuple[int, ...] = (1, 2, 4)
    greedy_tokens: int | None = None  # greedy generation limit (None: the rollouts')


def _se(values: Sequence[float]) -> float:
    v = np.asarray(values, dtype=float)
    return float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else float("nan")


def _ci_se(ci: Sequence[float]) -> float:
    lo, hi = (float(x) for x in ci)
    return (hi - lo) / (2 * 1.959963984540054) if math.isfinite(lo) and math.isfinite(hi) else float("nan")


def baselines(model: torch.nn.Module, tok: Any, probe: GrowthProbe, train_groups: Sequence[Sequence[Any]],
              held_groups: Sequence[Sequence[Any]], greedy_tokens: int) -> list[PredictorValue]:
    """The cheap predictors of the module docstring, from samples already drawn (plus one greedy pass)."""
    held = [[r.reward for r in g] for g in held_groups]
    per_prompt = [float(np.mean(h)) for h in held]
    best = [float(np.max(h)) for h in held]
    train = [[r.reward for r in g] for g in train_groups]
    mixed = [float(len(set(t)) > 1) for t in train]
    p = [float(np.mean(t)) for t in train]
    learn = [x * (1 - x) for x in p]
    items = [(q.prompt, q.answer) for q in probe.eval_prompts]
    with torch.no_grad():
        _, comps = greedy_accuracy(model, tok, items, probe.reward, greedy_tokens)
    greedy = [probe.reward(q, c.text, a, finished=c.finished) for (q, a), c in zip(items, comps)]
    out = [
        PredictorValue("greedy accuracy", float(np.mean(greedy)), _se(greedy), "baseline"),
        PredictorValue("sampled accuracy", float(np.mean(per_prompt)), _se(per_prompt), "baseline"),
        PredictorValue("pass@k", float(np.mean(best)), _se(best), "baseline", detail={"k": len(held[0])}),
        PredictorValue("mixed-outcome share", float(np.mean(mixed)), _se(mixed), "baseline"),
        PredictorValue("learnability p(1-p)", float(np.mean(learn)), _se(learn), "baseline"),
    ]
    if probe.loss_examples:
        losses = probe.losses(model)
        out.append(PredictorValue("-held-out loss", -float(losses.mean()), _se(losses), "baseline"))
    return out


def _rl_config(cfg: GRPOConfig, s: PredictSettings, compute: ComputeConfig, step: bool) -> RLPredictConfig:
    return RLPredictConfig(group_size=cfg.group_size, temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens,
                           seed=s.seed, prompts_per_step=cfg.prompts_per_step, clip_eps=cfg.clip_eps,
                           noise_draws=s.noise_draws, curvature_draws=0, expected_step=step, compute=compute)


def combined_se(se_train: float, contributions: Sequence[float] | None) -> float:
    """The standard error of a growth <V, G> whose V (training prompts) and G (a mean of per-held-out-prompt
    estimates) are independent: the training side's SE and the SE of the per-prompt contributions lr <V, G_j>
    over held-out prompts, added in quadrature (a first-order delta method; `contributions` None: G is exact)."""
    se_target = _se(contributions) if contributions is not None else 0.0
    return math.hypot(se_train, se_target) if math.isfinite(se_train) else se_target


def _sample_effect(name: str, measurement: str, growth: Any, contributions: Sequence[float] | None) -> PredictorValue:
    """A predict-rl growth as a predictor; `contributions` (per held-out prompt or example) add the target's noise."""
    se_train = _ci_se(growth.growth_rate_ci95)
    se_target = _se(contributions) if contributions is not None else 0.0
    se = combined_se(se_train, contributions)
    detail = {"se_training_prompts": se_train, "se_target": se_target, "growth_rate_ci95": list(growth.growth_rate_ci95),
              "zero_variance_fraction": growth.zero_variance_fraction, "positive_effect": growth.positive_effect,
              "noise_effect": growth.noise_effect}
    if contributions is not None:
        detail["mean_of_contributions"] = float(np.mean(contributions))
    return PredictorValue(name, float(growth.growth_rate), se, "sample-effect", measurement, detail)


def lookahead(model: torch.nn.Module, tok: Any, probe: GrowthProbe, step: Mapping[str, torch.Tensor], lr: float,
              points: Sequence[int], seed: int) -> list[PredictorValue]:
    """The target at theta_0 + t lr V for t in `points` (and 0); slope per step and its SE over prompts or examples.

    The weights are set from a copy of theta_0 at each point and restored exactly afterwards.
    """
    ts = [0, *sorted(set(int(t) for t in points if t > 0))]
    named = dict(model.named_parameters())
    theta0 = {n: named[n].detach().clone() for n in step}
    acc_rows, loss_rows = [], []
    try:
        for t in ts:
            with torch.no_grad():
                for n, v in step.items():
                    named[n].copy_(theta0[n] + (t * lr) * v.to(theta0[n].dtype))
            if "accuracy" in probe.measurements:
                acc_rows.append(probe.accuracy(model, tok, seed)[1])
            if "loss" in probe.measurements and probe.loss_examples:
                loss_rows.append(-probe.losses(model))
    finally:
        with torch.no_grad():
            for n in step:
                named[n].copy_(theta0[n])
    out = []
    for name, rows in (("accuracy", acc_rows), ("loss", loss_rows)):
        if not rows:
            continue
        m = np.stack(rows)  # [points, prompts or examples]
        per_item = [slope(ts, m[:, k]) for k in range(m.shape[1])]
        out.append(PredictorValue(f"look-ahead {name}", slope(ts, m.mean(1)), _se(per_item), "look-ahead", name,
                                  {"t": ts, "values": [float(x) for x in m.mean(1)]}))
    return out


def predict_start(model: torch.nn.Module, tok: Any, prompts: Sequence[RLPrompt], cfg: GRPOConfig, probe: GrowthProbe,
                  settings: PredictSettings | None = None, compute: ComputeConfig | None = None) -> list[PredictorValue]:
    """Every predictor of the module docstring for one start (the model is left as it was)."""
    s, compute = settings or PredictSettings(), compute or ComputeConfig(progress=False)
    cfg = cfg.validate()
    model.eval()
    params = select_parameters(model)
    train = sample_groups(model, tok, prompts, probe.reward, cfg.group_size, cfg.temperature, cfg.max_new_tokens,
                          s.seed, progress=False)
    held = sample_groups(model, tok, probe.eval_prompts, probe.reward, s.target_samples, cfg.temperature,
                         cfg.max_new_tokens, s.seed + 1, progress=False)
    out = baselines(model, tok, probe, train, held, s.greedy_tokens or cfg.max_new_tokens)
    lr = cfg.update.lr
    G, _ = reinforce_gradient(model, params, held, "loo", cfg.temperature, compute.batch_size, False)
    acc = predict_rl(model, tok, prompts, probe.reward, TargetVector(G, "accuracy"), cfg.update,
                     _rl_config(cfg, s, compute, True), groups=train)
    assert acc.step is not None
    V = acc.step
    del G
    contrib = [lr * vector_dot(V, reinforce_gradient(model, params, [g], "loo", cfg.temperature, compute.batch_size,
                                                      False)[0]) for g in held]
    out.append(_sample_effect("sample-effect accuracy", "accuracy", acc.growth, contrib))
    with warnings.catch_warnings():  # the same rollouts: predict-rl's warnings were given once, above
        warnings.simplefilter("ignore", RLPredictionWarning)
        if probe.direction is not None:
            d = predict_rl(model, tok, prompts, probe.reward, TargetVector(dict(probe.direction), "direction"), cfg.update,
                           _rl_config(cfg, s, compute, False), groups=train)
            out.append(_sample_effect("sample-effect direction", "direction", d.growth, None))
            out[-1].detail["lr_step_dot_direction"] = lr * vector_dot(V, probe.direction)
        if probe.loss_examples:
            lt = predict_rl(model, tok, prompts, probe.reward, LossTarget(probe.loss_examples), cfg.update,
                            _rl_config(cfg, s, compute, False), groups=train)
            per_ex = [lr * vector_dot(V, resolve_target(LossTarget([e]), model, params, [], compute).vector)
                      for e in probe.loss_examples]
            out.append(_sample_effect("sample-effect loss", "loss", lt.growth, per_ex))
    out += lookahead(model, tok, replace(probe, eval_samples=s.target_samples), V, lr, s.lookahead, s.seed + 2)
    return out


def as_records(values: Sequence[PredictorValue]) -> list[dict[str, Any]]:
    """JSON-ready records of predictor values."""
    return [asdict(v) for v in values]


def from_records(records: Sequence[Mapping[str, Any]]) -> list[PredictorValue]:
    """Predictor values back from `as_records`."""
    return [PredictorValue(**dict(r)) for r in records]
