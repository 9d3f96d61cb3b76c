"""Token-position log-prob quantiles from GRPO replay buffers.

`train-grpo --out RUN` dumps every step's rollouts to RUN/replay/step-XXXXX.jsonl, one line per
rollout with `logprobs`: the log-prob of each completion token under the policy that sampled it
(`sample_effect.training.grpo`). For every step and token position t (0-based within the
completion) this module computes a low quantile (default q = 0.01) of the log-probs at t over
all of that step's rollouts: how unlikely the rarest tokens the policy emits at each position are,
and how that tail moves during training.

`bucket` > 1 pools positions [k * bucket, (k + 1) * bucket) into one column (labelled by its first
position k * bucket) so that long completions stay readable; a (step, position) cell with fewer
than `min_count` tokens gets NaN.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pandas as pd

from sample_effect.errors import ConfigError, SampleEffectError

REPLAY_GLOB = "step-*.jsonl"
COLUMNS = ("step", "position", "quantile", "count")


def replay_files(path: str | os.PathLike) -> list[Path]:
    """The step-*.jsonl files of a train-grpo run directory, of its replay/ directory, or one such file."""
    p = Path(path)
    if not p.exists():
        raise SampleEffectError(f"replay directory not found: {p} (expected a train-grpo output directory or its replay/)")
    if p.is_file():
        return [p]
    d = p / "replay" if (p / "replay").is_dir() else p
    files = sorted(f for f in d.glob(REPLAY_GLOB) if f.is_file())
    if not files:
        raise SampleEffectError(f"no {REPLAY_GLOB} files in {d} (expected a train-grpo output directory or its replay/)")
    return files


def read_replay(path: str | os.PathLike) -> pd.DataFrame:
    """Every completion token of a replay: one row (step, rollout, position, logprob) per token.

    `rollout` numbers the rollouts of a step in file order. Raises SampleEffectError naming
    file:line for a line that is not a replay record.
    """
    from sample_effect.data.examples import read_jsonl

    steps: list[np.ndarray] = []
    rollouts: list[np.ndarray] = []
    positions: list[np.ndarray] = []
    values: list[np.ndarray] = []
    per_step: dict[int, int] = {}
    files = replay_files(path)
    n_lines = 0
    for f in files:
        if not f.read_bytes().strip():
            raise SampleEffectError(f"{f}: empty replay file, expected one JSON line per rollout")
        for lineno, obj in read_jsonl(f):
            where = f"{f}:{lineno}"
            for key in ("step", "logprobs"):
                if key not in obj:
                    raise SampleEffectError(f"{where}: missing field '{key}' (not a train-grpo replay line)")
            step = obj["step"]
            if type(step) is not int:
                raise SampleEffectError(f"{where}: field 'step' must be an integer, got {step!r}")
            lps = obj["logprobs"]
            if not isinstance(lps, list):
                raise SampleEffectError(f"{where}: field 'logprobs' must be a list of numbers, got {type(lps).__name__}")
            for i, v in enumerate(lps):
                if type(v) not in (int, float) or not math.isfinite(v):
                    raise SampleEffectError(f"{where}: logprobs[{i}] must be a finite number, got {v!r}")
            k = per_step.get(step, 0)
            per_step[step] = k + 1
            n_lines += 1
            n = len(lps)
            steps.append(np.full(n, step, dtype=np.int64))
            rollouts.append(np.full(n, k, dtype=np.int64))
            positions.append(np.arange(n, dtype=np.int64))
            values.append(np.asarray(lps, dtype=np.float64))
    df = pd.DataFrame({
        "step": np.concatenate(steps), "rollout": np.concatenate(rollouts),
        "position": np.concatenate(positions), "logprob": np.concatenate(values),
    })
    if df.empty:
        raise SampleEffectError(f"{path}: the replay's {n_lines} rollout(s) hold no completion tokens")
    return df


def quantile_table(tokens: pd.DataFrame, q: float = 0.01, min_count: int = 5, bucket: int = 1) -> pd.DataFrame:
    """Tidy (step, position, quantile, count): the q-quantile (numpy's default, linear) of the token
    log-probs per step and position bucket, NaN where count < min_count; `position` is the bucket's first position."""
    check_settings(q, min_count, bucket)
    pos = (tokens["position"].to_numpy() // bucket) * bucket
    keyed = pd.DataFrame({"step": tokens["step"].to_numpy(), "position": pos, "logprob": tokens["logprob"].to_numpy()})
    grouped = keyed.groupby(["step", "position"], sort=True)["logprob"]
    out = pd.DataFrame({"quantile": grouped.quantile(q, interpolation="linear"), "count": grouped.size()}).reset_index()
    out.loc[out["count"] < min_count, "quantile"] = np.nan
    out["count"] = out["count"].astype(np.int64)
    return out[list(COLUMNS)]


def quantile_pivot(table: pd.DataFrame, bucket: int = 1) -> pd.DataFrame:
    """Step x position matrix of `quantile_table`'s quantiles: every bucket from 0 to the longest, NaN where empty."""
    pivot = table.pivot(index="step", columns="position", values="quantile")
    last = int(table["position"].max()) if len(table) else 0
    pivot = pivot.reindex(columns=range(0, last + 1, bucket))
    pivot.index.name, pivot.columns.name = "step", "position"
    return pivot


def logprob_quantiles(
    path: str | os.PathLike, q: float = 0.01, min_count: int = 5, bucket: int = 1
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read a replay (run dir, replay/ dir or one step file) and return (tidy table, step x position pivot)."""
    check_settings(q, min_count, bucket)
    table = quantile_table(read_replay(path), q, min_count, bucket)
    return table, quantile_pivot(table, bucket)


def check_settings(q: float, min_count: int, bucket: int) -> None:
    """Raise SampleEffectError unless 0 <= q <= 1, min_count >= 1 and bucket >= 1."""
    if not (isinstance(q, (int, float)) and 0 <= q <= 1):
        raise ConfigError("check_settings", f"<q> must be in [0, 1], got {q}")
    if min_count < 1:
        raise ConfigError("check_settings", f"<min_count> must be >= 1, got {min_count}")
    if bucket < 1:
        raise ConfigError("check_settings", f"<bucket> must be >= 1, got {bucket}")


RARE_COLUMNS = ("step", "tokens", "threshold", "rare", "median_position", "mean_relative_position")


def rare_token_positions(tokens: pd.DataFrame, q: float = 0.01) -> pd.DataFrame:
    """Where a step's rarest tokens sit: per step, the tokens at or below that step's q-quantile log-prob.

    One row per step: `tokens` (all of the step's completion tokens), `threshold` (their
    q-quantile, numpy's linear one), `rare` (how many are <= it), `median_position` (median 0-based
    position of the rare tokens) and `mean_relative_position` (mean of position / completion
    length, so 0 is the first token and values near 1 the last, whatever the lengths). This is the
    number behind "does the 1% quantile move from late to early positions over RL steps": a falling
    median or relative position means the rarest tokens move toward the start of the completions.
    `tokens` is `read_replay`'s frame.
    """
    if not (isinstance(q, (int, float)) and 0 <= q <= 1):
        raise ConfigError("rare_token_positions", f"<q> must be in [0, 1], got {q}")
    missing = {"step", "rollout", "position", "logprob"} - set(tokens.columns)
    if missing:
        raise SampleEffectError(f"rare_token_positions needs read_replay's columns; missing {sorted(missing)}")
    lengths = tokens.groupby(["step", "rollout"])["position"].transform("max") + 1
    rel = tokens["position"] / lengths
    rows = []
    for step, idx in tokens.groupby("step", sort=True).groups.items():
        lp = tokens.loc[idx, "logprob"].to_numpy()
        thr = float(np.quantile(lp, q))
        rare = lp <= thr
        rows.append({"step": int(step), "tokens": int(lp.size), "threshold": thr, "rare": int(rare.sum()),
                     "median_position": float(np.median(tokens.loc[idx, "position"].to_numpy()[rare])),
                     "mean_relative_position": float(rel.loc[idx].to_numpy()[rare].mean())})
    return pd.DataFrame(rows, columns=list(RARE_COLUMNS))
