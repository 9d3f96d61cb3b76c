"""The result of scoring: effects in input order (`Effects`) and the ranked table (`rank_table`)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from sample_effect.engine.vectors import TargetVector

COLUMNS = ["id", "rank", "effect", "loss", "n_tokens", "n_responses", "grad_norm", "flag"]


@dataclass
class Effects:
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

    def top(self, k: int) -> pd.DataFrame:
        """The k highest-ranked rows of `table()` (the examples whose step helps the target most)."""
        if k < 0:
            raise ValueError(f"k must be >= 0, got {k}")
        return self.table().head(k).reset_index(drop=True)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the ranked table to `path`, CSV or Parquet by extension (atomically); return the path."""
        from sample_effect.io import write_table

        write_table(self.table(), path)
        return Path(path)


def rank_table(df: pd.DataFrame) -> pd.DataFrame:
    """Add `rank` (1 = largest effect, ties by input order, non-finite last) and sort by it."""
    eff = df["effect"].where(np.isfinite(df["effect"]))
    df = df.assign(rank=eff.rank(ascending=False, method="first", na_option="bottom").astype(int))
    df = df.sort_values("rank", kind="stable").reset_index(drop=True)
    return df[[c for c in COLUMNS if c in df.columns] + [c for c in df.columns if c not in COLUMNS]]
