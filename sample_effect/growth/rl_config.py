"""predict-rl's settings (`RLPredictConfig`) and which noise terms a prediction estimates (`NoisePlan`).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from sample_effect.engine.core import ComputeConfig
from sample_effect.errors import ConfigError
from sample_effect.growth.noise import spill_space_note
from sample_effect.growth.trajectory import StepContext
from sample_effect.models.loading import accumulation_dtype
from sample_effect.targets.core import Target

log = logging.getLogger("sample_effect")


# Dense vectors the noise terms hold at once, whatever the number of prompts: a batch's running
# sum and the row being added (or dbar_w and one update), the step or centred update, its H v.
RESIDENT_COPIES = 4


def _noise_memory_note(params: Mapping[str, torch.Tensor], n_prompts: int, compute: ComputeConfig,
                       spill_dir: str | os.PathLike | None) -> str | None:
    """Why the noise terms cannot run here (None when they can): their few resident vectors exceed the memory
    budget, or the spilled per-prompt gradients (one per prompt, on disk) exceed the free space."""
    acc = accumulation_dtype(next(iter(params.values())).dtype)
    row = sum(p.numel() for p in params.values()) * torch.empty((), dtype=acc).element_size()
    budget = compute.budget_bytes()
    if budget is not None and RESIDENT_COPIES * row > budget:
        return (f"skipped: the noise terms hold {RESIDENT_COPIES} dense vectors at a time (about "
                f"{RESIDENT_COPIES * row / 1e9:.3g} GB), more than the memory budget {budget / 1e9:.3g} GB; "
                "pass a parameter subset (params) or a larger memory_budget")
    return spill_space_note(n_prompts * row, spill_dir)


@dataclass
class RLPredictConfig:
    """How `predict_rl` samples and what it estimates (the CLI's predict-rl flags map onto these fields).

    group_size rollouts per prompt at `temperature`, up to `max_new_tokens`, seeded per prompt by
    `seed`; `prompts_per_step` prompts per simulated GRPO batch; `clip_eps` the PPO clip (inactive
    on the first on-policy step); `noise` turns the noise terms on; `n_boot` bootstrap draws of the
    positive effect; `noise_draws` batch draws of the first-order batch term; `curvature_draws`
    Hessian-vector products of the second-order term (0: off); `spill_dir` where the noise terms'
    per-prompt gradients go on disk (None: the system's temporary directory). `horizon_lrs`, the lr
    of every step of a planned run (empty: off), asks for `replay_runs` replays of that run on the
    frozen per-prompt gradients with the optimiser state carried (`replay_path`). `expected_step` also
    returns the expected trainer step per unit lr, E_S[U(clip(gbar_S))] over the batch draws of the
    noise term (a dense vector, `RLPrediction.step`; lr times its dot with G is the first-order growth
    rate), e.g. to look ahead along it or to dot it with other targets. `compute` says how to compute
    (batch size, memory budget, progress bars).
    """

    group_size: int = 8
    temperature: float = 1.0
    max_new_tokens: int = 256
    seed: int = 0
    prompts_per_step: int = 20
    clip_eps: float = 0.2
    noise: bool = True
    n_boot: int = 2000
    noise_draws: int = 256
    curvature_draws: int = 16
    spill_dir: str | None = None
    horizon_lrs: tuple[float, ...] = ()
    replay_runs: int = 16
    expected_step: bool = False
    compute: ComputeConfig = field(default_factory=ComputeConfig)

    def validate(self, sampling: bool = True) -> RLPredictConfig:
        """Raise SampleEffectError on an out-of-range setting; return self."""
        if self.group_size < 2 and sampling:
            raise ConfigError("RLPredictConfig", f"<group_size> must be >= 2 (advantages need a group), got {self.group_size}")
        for name, low in (("prompts_per_step", 1), ("n_boot", 1), ("noise_draws", 1), ("curvature_draws", 0),
                          ("replay_runs", 1)):
            if getattr(self, name) < low:
                raise ConfigError("RLPredictConfig", f"<{name}> must be >= {low}, got {getattr(self, name)}")
        if any(not (math.isfinite(x) and x >= 0) for x in self.horizon_lrs):
            raise ConfigError("RLPredictConfig", f"<horizon_lrs> must be finite and >= 0, got {list(self.horizon_lrs)}")
        return self


@dataclass
class NoisePlan:
    """Which noise terms `predict_rl` estimates, and why any are skipped."""

    noise: bool
    hessian: bool
    batch: bool
    second: bool
    nonlinear: bool
    memory_note: str | None

    replay: bool = False
    step: bool = False

    @property
    def keep_grads(self) -> bool:
        """Whether the per-prompt gradients must be kept (spilled): the batch term, the second-order term, the replay
        or the expected step."""
        return self.batch or self.second or self.replay or self.step


def noise_plan(target: Target, ctx: StepContext, cfg: RLPredictConfig, n_prompts: int) -> NoisePlan:
    """The noise terms this target and update call for, dropped (with the reason) when their tensors exceed the budget."""
    loss_target = target.hessian_examples() is not None
    nonlinear = ctx.nonlinear
    plan = NoisePlan(cfg.noise, cfg.noise and loss_target and ctx.update.rule.is_linear, cfg.noise and nonlinear,
                      cfg.noise and loss_target and cfg.curvature_draws > 0, nonlinear, None, bool(cfg.horizon_lrs),
                      cfg.expected_step)
    if plan.hessian or plan.keep_grads:
        note = _noise_memory_note(ctx.params, n_prompts, cfg.compute, cfg.spill_dir)
        if note is not None:  # the positive effect needs none of it: report it, and say why the rest is missing
            log.warning("predict-rl: noise and second-order terms %s", note)
            plan = NoisePlan(False, False, False, False, nonlinear, note, False, False)
    return plan
