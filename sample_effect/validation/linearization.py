"""Validation of the first-order picture: does lr * e(s) predict what one real step on s does?

`linearization_check` takes, for each example and each learning rate, one real optimiser step
(torch.optim, fresh state, clip_grad_norm_) on that example alone from the same starting
weights, measures the actual drop of the target loss, and sets it against the prediction
lr * e(s). As lr -> 0 the two must agree (Pearson r -> 1); the lr sweep shows where the
first-order picture breaks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from sample_effect.data.examples import TokenizedExample
from sample_effect.engine.core import ComputeConfig, example_loss_values
from sample_effect.errors import ConfigError, SampleEffectError
from sample_effect.scoring.effects import compute_effects
from sample_effect.targets.core import LossTarget, resolve_target
from sample_effect.update.optim import OptimizerState, UpdateConfig


@dataclass
class LinearizationResult:
    """Per (lr, example) rows and per-lr correlations."""

    rows: pd.DataFrame  # lr, id, effect, predicted, actual
    summary: pd.DataFrame  # lr, pearson, spearman, n


def _real_step(model: torch.nn.Module, params: Mapping[str, torch.nn.Parameter], ex: TokenizedExample, update: UpdateConfig, lr: float) -> None:
    from sample_effect.training.sft import batch_loss

    hyper = OptimizerState().hyper(next(iter(params)), update)
    plist = list(params.values())
    opt = update.rule.torch_optimizer(plist, lr, hyper)
    opt.zero_grad(set_to_none=True)
    batch_loss(model, [ex]).backward()
    if update.clip is not None:
        torch.nn.utils.clip_grad_norm_(plist, update.clip)
    opt.step()
    opt.zero_grad(set_to_none=True)


def linearization_check(
    model: torch.nn.Module,
    params: Mapping[str, torch.nn.Parameter],
    examples: Sequence[TokenizedExample],
    target_examples: Sequence[TokenizedExample],
    update: UpdateConfig,
    lrs: Sequence[float],
    compute: ComputeConfig | None = None,
    progress: bool = False,
) -> LinearizationResult:
    """Predicted (lr * e(s)) vs actual one-step drops of the mean target loss, for every lr.

    progress=True shows tqdm bars on stderr: the effects, then one tick per real step (lr x example).
    """
    from scipy.stats import pearsonr, spearmanr

    if not lrs or any(not lr > 0 for lr in lrs):
        raise ConfigError("linearization_check", "<lrs> must be positive numbers")
    if len(examples) < 3:
        raise SampleEffectError("the linearisation check needs at least 3 examples")
    compute = compute or ComputeConfig(progress=False)
    if progress:
        compute = replace(compute, progress=True)
    target = resolve_target(LossTarget(target_examples), model, params, examples, compute)
    effects = compute_effects(model, params, examples, target, update, compute=compute).effect
    base = float(example_loss_values(model, target_examples).mean())
    saved = {n: p.detach().clone() for n, p in params.items()}
    rows = []
    with tqdm(total=len(lrs) * len(examples), desc="linearization: real steps", unit="step", disable=not progress) as bar:
        for lr in lrs:
            bar.set_postfix_str(f"lr {lr:.3g}")
            for ex, e in zip(examples, effects):
                _real_step(model, params, ex, update, lr)
                after = float(example_loss_values(model, target_examples).mean())
                with torch.no_grad():
                    for n, p in params.items():
                        p.copy_(saved[n])
                rows.append({"lr": lr, "id": ex.id, "effect": float(e), "predicted": lr * float(e), "actual": base - after})
                bar.update(1)
    df = pd.DataFrame(rows)
    summary = []
    for lr, g in df.groupby("lr", sort=True):
        summary.append({
            "lr": lr, "pearson": float(pearsonr(g["predicted"], g["actual"])[0]),
            "spearman": float(spearmanr(g["predicted"], g["actual"])[0]), "n": len(g),
            "mean_abs_rel_error": float(np.mean(np.abs(g["actual"] - g["predicted"]) / np.abs(g["predicted"]).clip(1e-300))),
        })
    return LinearizationResult(df, pd.DataFrame(summary))


def rank_agreement(predicted: Sequence[float], actual: Sequence[float], count_key: str = "n_runs") -> dict:
    """How well predicted changes order the actual ones across runs: Spearman and Pearson from 3 runs, same order for 2."""
    out: dict = {count_key: len(predicted)}
    if len(predicted) >= 3:
        from scipy.stats import pearsonr, spearmanr

        out["spearman"] = float(spearmanr(predicted, actual)[0])
        out["pearson"] = float(pearsonr(predicted, actual)[0])
    elif len(predicted) == 2:
        out["same_order"] = bool(np.sign(predicted[0] - predicted[1]) == np.sign(actual[0] - actual[1]))
    return out


def plot_linearization(result: LinearizationResult, path: str) -> None:
    """One scatter panel per lr: predicted lr * e(s) against the actual drop, with the y = x line.

    Each panel is drawn in units of 10^k nats (k from its largest value, named in the axis labels)
    with a few plain ticks, so that small learning rates do not give long labels that run together.
    """
    from sample_effect.plots.figures import plain_ticks, power_of_ten, pyplot, save_figure

    plt = pyplot()
    lrs = list(result.summary["lr"])
    fig, axes = plt.subplots(1, len(lrs), figsize=(3.8 * len(lrs), 3.8), squeeze=False)
    for ax, (_, s) in zip(axes[0], result.summary.iterrows()):
        g = result.rows[result.rows["lr"] == s["lr"]]
        k = power_of_ten(np.concatenate([g["predicted"].to_numpy(float), g["actual"].to_numpy(float)]))
        pred, act = g["predicted"] / 10.0**k, g["actual"] / 10.0**k
        ax.scatter(pred, act, s=14)
        lo, hi = min(pred.min(), act.min()), max(pred.max(), act.max())
        ax.plot([lo, hi], [lo, hi], color="grey", ls="--", lw=0.8, label="y = x")
        ax.set_title(f"lr {s['lr']:.0e}: r = {s['pearson']:.4f}")
        unit = "nats" if k == 0 else f"$10^{{{k}}}$ nats"
        ax.set_xlabel(f"predicted drop lr * e(s) ({unit})")
        ax.set_ylabel(f"actual drop of target loss ({unit})")
        plain_ticks(ax.xaxis, 4)
        plain_ticks(ax.yaxis, 5)
        ax.legend(loc="upper left")
    fig.suptitle("Linearisation check: one real step per example")
    save_figure(fig, path)
