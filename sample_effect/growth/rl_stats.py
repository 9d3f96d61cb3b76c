"""Statistics of predict-rl over prompts and batches: empty batches, the positive effect, its bootstrap, batch draws.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from sample_effect.growth.rl_effects import step_effect


def empty_batch_probability(n_prompts: int, n_zero: int, batch: int) -> float:
    """P(a batch of `batch` prompts drawn without replacement holds only zero-variance groups).

    A batch larger than the pool is taken as the whole pool.
    """
    b = min(batch, n_prompts)
    if n_zero < b:
        return 0.0
    return math.comb(n_zero, b) / math.comb(n_prompts, b)


def positive_effect_per_lr(effect: np.ndarray, n_tokens: np.ndarray, zero_variance: np.ndarray, batch: int) -> float:
    """(1 - p_empty) * R: the expected first-order change of the target per unit lr of one GRPO step."""
    p_empty = empty_batch_probability(len(effect), int(zero_variance.sum()), batch)
    return (1.0 - p_empty) * step_effect(effect, n_tokens, zero_variance)


def bootstrap_positive_effect(
    effect: np.ndarray, n_tokens: np.ndarray, zero_variance: np.ndarray, batch: int, n_boot: int = 2000, seed: int = 0
) -> np.ndarray:
    """`n_boot` bootstrap replicates (prompts resampled with replacement) of `positive_effect_per_lr`."""
    n = len(effect)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    w = np.where(zero_variance, 0.0, n_tokens.astype(np.float64))
    num = (w * effect)[idx].sum(1)
    den = w[idx].sum(1)
    ratio = np.divide(num, den, out=np.zeros(n_boot), where=den > 0)
    n_zero = zero_variance[idx].sum(1)
    p_empty = np.array([empty_batch_probability(n, z, batch) for z in range(n + 1)])[n_zero]
    return (1.0 - p_empty) * ratio


def batch_draws(n_prompts: int, batch: int, draws: int, seed: int = 0) -> tuple[list[np.ndarray], bool]:
    """Batches of min(batch, n) prompt indices drawn without replacement, as the trainer draws a step's prompts.

    Every batch (exact expectation, returns True) when there are at most `draws` of them;
    otherwise `draws` seeded random ones (Monte Carlo, False).
    """
    b = min(batch, n_prompts)
    if math.comb(n_prompts, b) <= draws:
        import itertools

        return [np.array(c) for c in itertools.combinations(range(n_prompts), b)], True
    rng = np.random.default_rng(seed)
    return [np.sort(rng.choice(n_prompts, size=b, replace=False)) for _ in range(draws)], False


def batch_growth_stderr(values: np.ndarray, batches: Sequence[np.ndarray], n: int, b: int) -> float | None:
    """Standard error of the mean batch-step effect over fresh prompts and rollouts (None when b >= n).

    The mean over batches of b prompts is a U-statistic of the n sampled prompt groups; its
    variance is about (b^2 / n) Var(h(x)), h(x) the mean effect of the batches holding prompt x
    (Hoeffding's first-order term). Estimated from the same draws, so the Monte Carlo noise in
    h(x) makes it slightly conservative. This is the uncertainty a new sample of rollouts would
    show, which a bootstrap of the per-prompt effects alone misses for a non-linear update.
    """
    if b >= n or n < 3:
        return None
    contains = np.zeros((len(batches), n))
    for k, idx in enumerate(batches):
        contains[k, idx] = 1.0
    counts = contains.sum(0)
    seen = counts > 0
    if seen.sum() < 3:
        return None
    h = (contains.T @ values)[seen] / counts[seen]
    return float(b / math.sqrt(n) * h.std(ddof=1))
