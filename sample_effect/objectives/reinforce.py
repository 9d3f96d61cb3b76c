"""The REINFORCE objective: sum_i c_i log pi_T(y_i|x) with c_i = r_i - b_i, and its gradient over sampled groups.

This is the direction of the accuracy target (`targets.AccuracyTarget`): grad of test accuracy =
mean_x E_{y~pi}[(r(x,y) - b) grad log pi(y|x)], estimated from sampled completions.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from sample_effect.data.examples import pad_sequences
from sample_effect.errors import SampleEffectError
from sample_effect.models.loading import accumulation_dtype
from sample_effect.objectives.losses import token_logprobs

BASELINES = ("loo", "none")


def reinforce_coefficients(rewards: Sequence[float], baseline: str = "loo") -> list[float]:
    """r_i - b_i per sample: b = 0 ('none') or the mean of the other samples' rewards ('loo').

    With 'loo', r_i - mean_{j != i} r_j = (n r_i - sum r) / (n - 1), and exactly 0 when all rewards are equal.
    """
    n = len(rewards)
    if baseline == "none":
        return [float(r) for r in rewards]
    if baseline != "loo":
        raise SampleEffectError(f"unknown baseline '{baseline}'; choose one of {', '.join(BASELINES)}")
    if n < 2:
        raise SampleEffectError("the leave-one-out baseline needs at least 2 samples per prompt")
    if all(r == rewards[0] for r in rewards):
        return [0.0] * n
    total = float(sum(rewards))
    return [(n * float(r) - total) / (n - 1) for r in rewards]


def sequence_logprobs(model: torch.nn.Module, rollouts: Sequence[Any], temperature: float = 1.0) -> torch.Tensor:
    """log pi_T(y|x) per rollout: the SUM of its completion tokens' log-probs under softmax(logits / T)."""
    device = next(model.parameters()).device
    ids, mask = pad_sequences([r.ids for r in rollouts], [r.start for r in rollouts])
    ids, mask = ids.to(device), mask.to(device)
    logits = model(input_ids=ids, use_cache=False).logits
    if temperature != 1.0:
        logits = logits / temperature
    lp = token_logprobs(logits, ids)
    return (lp * mask.to(lp.dtype)).sum(-1)


def reinforce_gradient(
    model: torch.nn.Module,
    params: Mapping[str, torch.Tensor],
    groups: Sequence[Sequence[Any]],
    baseline: str = "loo",
    temperature: float = 1.0,
    batch_size: int = 16,
    progress: bool = True,
) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """G = mean_x (1/n) sum_i (r_i - b_i) grad log pi_T(y_i|x) over sampled groups, and its statistics.

    Statistics: accuracy (mean reward); accuracy_stderr, the sampling standard error of the
    accuracy of this fixed prompt set, sqrt(sum_x s_x^2 / n_x) / P with s_x^2 the unbiased
    within-prompt variance of the rewards; accuracy_prompt_stderr, the standard error over prompts
    (std of per-prompt mean rewards / sqrt P: it also counts which prompts were drawn);
    gradient_norm ||G||; gradient_stderr, the per-prompt spread of the estimate,
    sqrt(sum_x ||G_x - G||^2 / (P (P - 1))) (the square root of the trace of the covariance of G
    as a mean of per-prompt estimates G_x; NaN with one prompt); gradient_rel_stderr = that / ||G||.
    """
    if not groups:
        raise SampleEffectError("no test prompts for the accuracy target")
    if batch_size < 1:
        raise SampleEffectError(f"batch size must be >= 1, got {batch_size}")
    names = list(params)
    plist = [params[n] for n in names]
    acc = accumulation_dtype(plist[0].dtype)
    mean = {n: torch.zeros(p.shape, dtype=acc, device=p.device) for n, p in params.items()}
    m2 = 0.0
    within_var = 0.0
    prompt_means = []
    n_zero = 0
    for k, group in enumerate(tqdm(groups, desc="accuracy gradient", unit="prompt", disable=not progress, leave=False), 1):
        rewards = [float(r.reward) for r in group]
        ns = len(rewards)
        coefs = reinforce_coefficients(rewards, baseline)
        prompt_means.append(sum(rewards) / ns)
        within_var += (float(np.var(rewards, ddof=1)) / ns) if ns > 1 else float("nan")
        gx = {n: torch.zeros(p.shape, dtype=acc, device=p.device) for n, p in params.items()}
        if any(c != 0.0 for c in coefs):
            for start in range(0, ns, batch_size):
                part = group[start : start + batch_size]
                seq = sequence_logprobs(model, part, temperature)
                w = torch.tensor(coefs[start : start + batch_size], dtype=seq.dtype, device=seq.device) / ns
                grads = torch.autograd.grad((seq * w).sum(), plist, allow_unused=True)
                for n, gr in zip(names, grads):
                    if gr is not None:
                        gx[n] += gr.detach().to(acc)
        else:
            n_zero += 1
        # Welford over prompts: running mean of G_x and sum of squared deviations (in norm).
        dev_old = {n: gx[n] - mean[n] for n in names}
        for n in names:
            mean[n] += dev_old[n] / k
        m2 += float(sum((dev_old[n].double() * (gx[n] - mean[n]).double()).sum() for n in names))
    P = len(groups)
    norm = float(sum((v.double() ** 2).sum() for v in mean.values()) ** 0.5)
    pm = np.array(prompt_means)
    g_se = math.sqrt(max(m2, 0.0) / (P * (P - 1))) if P > 1 else float("nan")
    stats = {
        "accuracy": float(pm.mean()),
        "accuracy_stderr": math.sqrt(within_var) / P,
        "accuracy_prompt_stderr": float(pm.std(ddof=1) / math.sqrt(P)) if P > 1 else float("nan"),
        "gradient_norm": norm,
        "gradient_stderr": g_se,
        "gradient_rel_stderr": g_se / norm if norm > 0 else float("nan"),
        "n_prompts": float(P),
        "n_samples": float(sum(len(g) for g in groups) / P),
        "zero_variance_prompts": float(n_zero) if baseline == "loo" else float("nan"),
    }
    return mean, stats


