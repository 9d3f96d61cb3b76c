"""Typed results of predict-rl: each noise or second-order term, the replay, and the whole prediction (`RLGrowth`).

`RLGrowth.to_dict()` is the JSON record `predict_rl` has always written (the same keys, values and
order); `RLGrowth.from_dict` reads such a record back.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

NOISE_NOTE_HEAD, NOISE_NOTE_JOIN = "second-order (Hessian) term: ", "; first-order batch term: "


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


@dataclass
class RLReplay:
    """`replay_path` summarised: mean per-step change, the total with its standard error and the runs' 95% spread.

    When the replay could not run, `per_step` and `total` are None and `note` says why."""

    note: str
    per_step: list[float] | None = None
    total: float | None = None
    total_stderr: float | None = None
    total_runs_95: list[float] | None = None
    runs: int | None = None

    @property
    def computed(self) -> bool:
        """Whether the replay ran (False: skipped, with the reason in `note`)."""
        return self.per_step is not None

    def to_dict(self) -> dict[str, Any]:
        """The record's `replay` entry: three keys when skipped, six when computed."""
        if self.per_step is None:
            return {"note": self.note, "per_step": None, "total": None}
        return {
            "per_step": list(self.per_step), "total": self.total, "total_stderr": self.total_stderr,
            "total_runs_95": None if self.total_runs_95 is None else list(self.total_runs_95), "runs": self.runs,
            "note": self.note,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RLReplay:
        """The replay of a record's `replay` entry (either form)."""
        return cls(note=d["note"], per_step=d.get("per_step"), total=d.get("total"), total_stderr=d.get("total_stderr"),
                   total_runs_95=d.get("total_runs_95"), runs=d.get("runs"))


# Fields of RLGrowth that are not a record key of the same name with a plain value.
_TYPED = frozenset({"target_stats", "positive_effect_ci95", "hessian", "batch", "second_order", "growth_rate_ci95",
                    "replay", "warnings"})


@dataclass
class RLGrowth:
    """One checkpoint's predicted growth of a target per GRPO step, with what it rests on (`predict_rl`).

    The target (`target` is its kind), the sample (prompts, rollouts, rewards, zero-variance groups),
    the update and batch size, the effects, the positive effect with its bootstrap 95% interval, the
    noise terms, the second-order term, the growth rate with its 95% interval, the replay, and the
    run's settings, warnings and time. `to_dict()` is the JSON record, key for key.
    """

    target: str
    target_norm: float
    target_loss: float | None
    target_stats: dict[str, Any]
    n_prompts: int
    group_size: int
    n_rollouts: int
    reward_mean: float
    mean_completion_tokens: float
    zero_variance_groups: int
    zero_variance_fraction: float
    optimizer: str
    lr: float
    clip: float | None
    prompts_per_step: int
    prompts_per_step_requested: int
    informative_per_step: float
    empty_batch_probability: float
    effect_per_step: float
    effect_token_weighted: float
    effect_mean: float
    effect_mean_stderr: float | None
    positive_effect: float
    positive_effect_ci95: tuple[float, float]
    noise_effect: float | None
    noise_effect_stderr: float | None
    hessian: HessianTerm
    batch: BatchTerm
    second_order: SecondOrderTerm
    growth_rate: float
    growth_rate_ci95: tuple[float, float]
    growth_rate_ci_method: str
    n_bootstrap: int
    seed: int
    replay: RLReplay | None = None
    warnings: list[str] = field(default_factory=list)
    temperature: float | None = None  # None: the rollouts were given, not sampled
    max_new_tokens: int | None = None
    seconds: float = 0.0

    @property
    def growth_rate_second_order(self) -> float | None:
        """Positive effect + first-order batch term + the whole second-order term (None: not estimated)."""
        return self.second_order.growth

    @property
    def noise_note(self) -> str:
        """How each noise term was estimated, or why it was not: the record's `noise_note`."""
        return f"{NOISE_NOTE_HEAD}{self.hessian.note}{NOISE_NOTE_JOIN}{self.batch.note}"

    def to_dict(self) -> dict[str, Any]:
        """The JSON record of this prediction: today's keys, values and order (fresh lists and dicts)."""
        hess, bat, second = self.hessian, self.batch, self.second_order
        return {
            "target": self.target, "target_norm": self.target_norm, "target_loss": self.target_loss,
            "target_stats": dict(self.target_stats), "n_prompts": self.n_prompts, "group_size": self.group_size,
            "n_rollouts": self.n_rollouts, "reward_mean": self.reward_mean,
            "mean_completion_tokens": self.mean_completion_tokens,
            "zero_variance_groups": self.zero_variance_groups, "zero_variance_fraction": self.zero_variance_fraction,
            "optimizer": self.optimizer, "lr": self.lr, "clip": self.clip,
            "prompts_per_step": self.prompts_per_step, "informative_per_step": self.informative_per_step,
            "empty_batch_probability": self.empty_batch_probability,
            "effect_per_step": self.effect_per_step, "effect_token_weighted": self.effect_token_weighted,
            "effect_mean": self.effect_mean, "effect_mean_stderr": self.effect_mean_stderr,
            "positive_effect": self.positive_effect, "positive_effect_ci95": list(self.positive_effect_ci95),
            "noise_effect": self.noise_effect, "noise_effect_stderr": self.noise_effect_stderr,
            "noise_trace": hess.trace, "noise_hessian_effect": hess.effect,
            "noise_batch_effect": bat.effect, "noise_batch_stderr": bat.stderr,
            "noise_batch_exact": bat.exact, "noise_batch_draws": bat.draws,
            "noise_note": self.noise_note,
            "second_order_effect": second.effect, "second_order_stderr": second.stderr,
            "second_order_draws": second.draws, "growth_rate_second_order": second.growth,
            "second_order_note": second.note,
            "growth_rate": self.growth_rate, "growth_rate_ci95": list(self.growth_rate_ci95),
            "growth_rate_ci_method": self.growth_rate_ci_method, "n_bootstrap": self.n_bootstrap, "seed": self.seed,
            "replay": None if self.replay is None else self.replay.to_dict(),
            "prompts_per_step_requested": self.prompts_per_step_requested,
            "warnings": list(self.warnings),
            "temperature": self.temperature,
            "max_new_tokens": self.max_new_tokens,
            "seconds": self.seconds,
        }

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> RLGrowth:
        """The prediction of a record written by `to_dict` (keys beyond it, such as the CLI's `model`, are ignored).

        The record does not hold the Hessian term's own standard error nor the batch term's `growth_stderr`: None here."""
        note = record["noise_note"]
        hess_note, _, batch_note = note.removeprefix(NOISE_NOTE_HEAD).partition(NOISE_NOTE_JOIN)
        lo, hi = record["positive_effect_ci95"]
        glo, ghi = record["growth_rate_ci95"]
        plain = {f.name: record[f.name] for f in fields(cls) if f.name not in _TYPED}
        return cls(
            **plain, target_stats=dict(record["target_stats"]), positive_effect_ci95=(lo, hi), growth_rate_ci95=(glo, ghi),
            hessian=HessianTerm(effect=record["noise_hessian_effect"], note=hess_note, trace=record["noise_trace"]),
            batch=BatchTerm(effect=record["noise_batch_effect"], stderr=record["noise_batch_stderr"], note=batch_note,
                            exact=record["noise_batch_exact"], draws=record["noise_batch_draws"]),
            second_order=SecondOrderTerm(effect=record["second_order_effect"], stderr=record["second_order_stderr"],
                                         note=record["second_order_note"], draws=record["second_order_draws"],
                                         growth=record["growth_rate_second_order"]),
            replay=None if record["replay"] is None else RLReplay.from_dict(record["replay"]),
            warnings=list(record["warnings"]),
        )
