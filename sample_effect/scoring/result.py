"""The result of scoring: effects in input order (`EffectResult`) and the ranked table (`rank_table`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from sample_effect.engine.vectors import TargetVector

COLUMNS = ["id", "rank", "effect", "loss", "n_tokens", "n_responses", "grad_norm", "flag"]


@dataclass
class EffectResult:
    """Effects in input order plus what produced them."""

    ids: list[str]
    effect: np.ndarray
    loss: np.ndarray
    grad_norm: np.ndarray
    n_tokens: np.ndarray
    n_responses: np.ndarray
    target: TargetVector

    def table(self) -> pd.DataFrame:
        """One row per example, ranked (rank 1 = largest effect; ties keep input order)."""
        df = pd.DataFrame(
            {
                "id": self.ids,
                "effect": self.effect,
                "loss": self.loss,
                "n_tokens": self.n_tokens,
                "n_responses": self.n_responses,
                "grad_norm": self.grad_norm,
                "flag": np.where(np.isfinite(self.effect) & np.isfinite(self.loss), "", "nonfinite"),
            }
        )
        return rank_table(df)


def rank_table(df: pd.DataFrame) -> pd.DataFrame:
    """Add `rank` (1 = largest effect, ties by input order, non-finite last) and sort by it."""
    eff = df["effect"].where(np.isfinite(df["effect"]))
    df = df.assign(rank=eff.rank(ascending=False, method="first", na_option="bottom").astype(int))
    df = df.sort_values("rank", kind="stable").reset_index(drop=True)
    return df[[c for c in COLUMNS if c in df.columns] + [c for c in df.columns if c not in COLUMNS]]
