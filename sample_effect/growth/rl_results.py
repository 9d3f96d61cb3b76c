"""Typed terms of a predict-rl record: each noise or second-order term's numbers with the note that explains them.

The record (`growth.rl._growth_record`) reads them by attribute and writes today's JSON keys.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class NoiseTerm:
    """One term of the growth rate beside the positive effect: its value (None: not estimated), standard error, note."""

    effect: float | None = None
    stderr: float | None = None
    note: str = ""


@dataclass
class HessianTerm(NoiseTerm):
    """The second-order noise term (lr^2 / 2b) tr(H_T Sigma_w), with the trace itself."""

    trace: float | None = None


@dataclass
class BatchTerm(NoiseTerm):
    """The first-order batch term of a non-linear update: batches drawn, whether exhaustively, and the U-statistic
    standard error of the whole batch-step mean (None when not available)."""

    exact: bool | None = None
    draws: int = 0
    growth_stderr: float | None = None


@dataclass
class SecondOrderTerm(NoiseTerm):
    """The whole second-order term (lr^2 / 2) E_S[U_S^T H_T U_S] over `draws` batches, and the growth including it."""

    draws: int = 0
    growth: float | None = None
