"""Real RL growth as a rate with an error bar: R GRPO runs per start, a least-squares slope per run.

Three measurements of a GRPO run at its early steps (`GrowthProbe`), each a target T whose rise is
progress:

- `accuracy`: the mean reward of `eval_samples` completions per held-out prompt, sampled at the
  trainer's temperature. Prompt k's generator is seeded by (eval_seed, k) at every evaluation, of
  every run and every start: common random numbers, so a difference between two evaluations is the
  model's, not the draw's (the same uniform numbers decide each token while the distributions stay
  close). Its noise is still a sampling noise, which the spread over runs carries.
- `direction`: <theta_k - theta_0, d> for a fixed direction d (e.g. a reference run's
  theta_K - theta_0, the paper's protocol): exact, no sampling noise at all.
- `loss`: minus the mean held-out loss of correct solutions (exact given the examples).

`measure_runs` trains `runs` GRPO runs per start (trainer seeds cfg.seed + r), measures them at
every step (accuracy every `accuracy_every` steps and at the last), caches each finished run as a
CSV (a rerun skips it), and `run_slopes` fits one slope per run and measurement.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from sample_effect.data.examples import TokenizedExample
from sample_effect.engine.core import example_loss_values
from sample_effect.errors import SampleEffectError
from sample_effect.io import atomic_open
from sample_effect.rollouts.prompts import RLPrompt
from sample_effect.training.grpo import GRPOConfig, GRPOHooks, train_grpo
from sample_effect.validation.rl_accuracy import sampled_accuracy_groups
from sample_effect.validation.rl_curves import slope

MEASUREMENTS = ("accuracy", "direction", "loss")
Loader = Callable[[], tuple[torch.nn.Module, Any]]


@dataclass
class GrowthProbe:
    """What a GRPO run is measured by (see the module docstring) and with which samples."""

    measurements: tuple[str, ...]
    eval_prompts: Sequence[RLPrompt]
    reward: Callable[..., float]
    temperature: float = 1.0
    max_new_tokens: int = 256
    eval_samples: int = 8
    eval_seed: int = 5000
    accuracy_every: int = 1
    direction: Mapping[str, torch.Tensor] | None = None
    loss_examples: Sequence[TokenizedExample] | None = None

    def validate(self) -> GrowthProbe:
        """Check that every measurement asked for has what it needs; return self."""
        unknown = [m for m in self.measurements if m not in MEASUREMENTS]
        if unknown or not self.measurements:
            raise SampleEffectError(f"unknown measurement {unknown or self.measurements}; choose from {', '.join(MEASUREMENTS)}")
        if "accuracy" in self.measurements and not self.eval_prompts:
            raise SampleEffectError("the accuracy measurement needs held-out prompts (--eval-prompts)")
        if "direction" in self.measurements and self.direction is None:
            raise SampleEffectError("the direction measurement needs a direction (--direction BASE FINAL or --reference-run)")
        if "loss" in self.measurements and not self.loss_examples:
            raise SampleEffectError("the loss measurement needs held-out correct solutions (--target-data, or "
                                    "--eval-prompts with a response field)")
        for name in ("eval_samples", "accuracy_every"):
            if getattr(self, name) < 1:
                raise SampleEffectError(f"{name} must be >= 1, got {getattr(self, name)}")
        return self

    def accuracy(self, model: torch.nn.Module, tokenizer: Any, seed: int | None = None) -> tuple[float, np.ndarray]:
        """Sampled held-out accuracy and its per-prompt means (seed: `eval_seed` unless given)."""
        acc, groups = sampled_accuracy_groups(model, tokenizer, self.eval_prompts, self.reward, self.eval_samples,
                                              self.temperature, self.max_new_tokens,
                                              self.eval_seed if seed is None else seed)
        return acc, np.array([np.mean([r.reward for r in g]) for g in groups])

    def losses(self, model: torch.nn.Module) -> np.ndarray:
        """Per-example held-out loss of the correct solutions."""
        assert self.loss_examples is not None
        with torch.no_grad():
            return example_loss_values(model, self.loss_examples).cpu().numpy()

    def along(self, model: torch.nn.Module, theta0: Mapping[str, torch.Tensor]) -> float:
        """<theta - theta_0, d> in float64 over the direction's parameters."""
        assert self.direction is not None
        named = dict(model.named_parameters())
        return float(sum(((named[n].detach().double() - theta0[n].double()) * d.double()).sum()
                         for n, d in self.direction.items()))

    def measure(self, step: int, last: int, model: torch.nn.Module, tokenizer: Any,
                theta0: Mapping[str, torch.Tensor]) -> dict[str, float]:
        """Every measurement due at `step` of a run of `last` steps."""
        out: dict[str, float] = {}
        if "accuracy" in self.measurements and (step % self.accuracy_every == 0 or step == last):
            out["accuracy"] = self.accuracy(model, tokenizer)[0]
        if "direction" in self.measurements:
            out["direction"] = self.along(model, theta0)
        if "loss" in self.measurements:
            out["loss"] = -float(self.losses(model).mean())
        return out

    def key(self) -> dict[str, Any]:
        """What the measured values depend on besides the start and the trainer (for the run cache)."""
        d = hashlib.sha256()
        for t in (self.direction or {}).values():
            d.update(t.detach().double().cpu().numpy().tobytes())
        return {"measurements": list(self.measurements), "eval_ids": [p.id for p in self.eval_prompts],
                "eval_samples": self.eval_samples, "eval_seed": self.eval_seed, "accuracy_every": self.accuracy_every,
                "temperature": self.temperature, "max_new_tokens": self.max_new_tokens,
                "reward": getattr(self.reward, "__name__", str(self.reward)), "direction": d.hexdigest()[:16],
                "loss_examples": [e.id for e in self.loss_examples or []]}


def run_cache_key(start: str, cfg: GRPOConfig, probe: GrowthProbe, prompts: Sequence[RLPrompt]) -> str:
    """A short hash of everything a run's measurements depend on (start, trainer settings, probe, prompts)."""
    blob = json.dumps({"start": start, "grpo": asdict(cfg), "probe": probe.key(), "prompts": [p.id for p in prompts]},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def measure_runs(
    name: str,
    load: Loader,
    prompts: Sequence[RLPrompt],
    cfg: GRPOConfig,
    runs: int,
    probe: GrowthProbe,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = False,
) -> pd.DataFrame:
    """Rows (start, run, step, measurement, value) of `runs` GRPO runs from one start; finished runs are cached.

    With `cache_dir` each run is written to CACHE/runs/NAME-KEY-runR.json when it finishes, and read
    back instead of re-run next time (KEY: `run_cache_key`). The step-0 measurements, the same
    for every run of a start, are made once.
    """
    cfg = replace(cfg.validate(), eval_every=1)
    if runs < 1:
        raise SampleEffectError(f"runs must be >= 1, got {runs}")
    key = run_cache_key(name, cfg, probe, prompts)
    where = Path(cache_dir) / "runs" if cache_dir is not None else None
    if where is not None:
        where.mkdir(parents=True, exist_ok=True)
    frames: list[pd.DataFrame] = []
    step0: dict[str, float] | None = None
    for run in range(runs):
        path = where / f"{file_slug(name)}-{key}-run{run}.json" if where is not None else None
        if path is not None and path.exists():
            frames.append(pd.DataFrame(json.loads(path.read_text())))
            continue
        legacy = path.with_suffix(".csv") if path is not None else None
        if legacy is not None and legacy.exists():  # a cache written before runs were kept as JSON
            frames.append(pd.read_csv(legacy))
            continue
        model, tok = load()
        theta0 = {n: p.detach().clone() for n, p in model.named_parameters()}

        def on_eval(step: int, m: torch.nn.Module, tok: Any = tok, theta0: dict = theta0) -> dict[str, float]:
            nonlocal step0
            if step == 0 and step0 is not None:
                return dict(step0)
            values = probe.measure(step, cfg.steps, m, tok, theta0)
            if step == 0:
                step0 = dict(values)
            return values

        metrics = train_grpo(model, tok, prompts, probe.reward, replace(cfg, seed=cfg.seed + run),
                             hooks=GRPOHooks(on_eval=on_eval), progress=progress)
        rows = [{"start": name, "run": run, "step": int(r["step"]), "measurement": m, "value": float(r[m]),
                 "zero_variance_groups": r.get("zero_variance_groups")}
                for _, r in metrics.iterrows() for m in probe.measurements if m in r and pd.notna(r[m])]
        frame = pd.DataFrame(rows)
        if path is not None:  # JSON keeps every float exactly, so a resumed comparison gives the same numbers
            with atomic_open(path) as f:
                json.dump(rows, f)
        frames.append(frame)
        del model
    return pd.concat(frames, ignore_index=True)


def run_slopes(rows: pd.DataFrame) -> pd.DataFrame:
    """One least-squares slope (per GRPO step) per start, run and measurement."""
    out = [{"start": s, "run": int(r), "measurement": m, "slope": slope(g["step"], g["value"]), "points": len(g)}
           for (s, r, m), g in rows.groupby(["start", "run", "measurement"], sort=False)]
    return pd.DataFrame(out)


def file_slug(name: str) -> str:
    """`name` with every character but letters, digits, '.', '_' and '-' replaced by '_' (for cache file names)."""
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name)
