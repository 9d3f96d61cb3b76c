"""`Analyzer`: one object for the whole workflow, from a model to ranked data and growth predictions.

An `Analyzer` holds what every question about one checkpoint shares: the model and tokenizer, the
parameters scored, the update the trainer takes (rule, hyper-parameters, clipping) and the
optimiser state it starts from, how to compute, and where to cache. Each method answers one
question and returns a typed result:

    az = Analyzer.from_pretrained("tiny", update=UpdateConfig("adamw", lr=1e-4, clip=1.0))
    effects = az.score("train.jsonl", target="val.jsonl")   # Effects: .table(), .top(k), .save(path)
    curve = az.predict_sft("train.jsonl", target="val.jsonl")   # SFTCurve
    growth = az.predict_rl("rl.jsonl", "kk", target="val.jsonl")   # RLPrediction

Everything it does is a call into the library's subpackages, which stay importable for finer
control (docs/api.md).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any, cast

import torch

from sample_effect.data.examples import Example, TokenizedExample, load_examples, tokenize_examples
from sample_effect.engine.core import ComputeConfig
from sample_effect.engine.vectors import TargetVector
from sample_effect.errors import ConfigError, SampleEffectError
from sample_effect.targets.core import LossTarget, Target
from sample_effect.update.optim import OptimizerState, UpdateConfig

Data = str | os.PathLike | Sequence[Example] | Sequence[TokenizedExample]
TargetLike = Target | TargetVector | str | os.PathLike | Sequence[Example] | Sequence[TokenizedExample]


@dataclass
class Analyzer:
    """A checkpoint and the update its trainer takes; `score`, `explain`, `project`, `predict_sft`,
    `predict_rl` and `validate_linearization` ask questions of it.

    `params` is a regex over parameter names (None: every trainable parameter); `optimizer_state`
    a loaded `OptimizerState`, a file in the `--optimizer-state` format or a transformers Trainer
    checkpoint directory (None: a fresh optimiser); `cache_dir` makes `score` resumable (finished
    shards are kept and reused by the same settings); `max_length` truncates tokenized data.
    """

    model: torch.nn.Module
    tokenizer: Any
    params: str | None = None
    update: UpdateConfig = field(default_factory=UpdateConfig)
    optimizer_state: str | os.PathLike | OptimizerState | None = None
    compute: ComputeConfig = field(default_factory=ComputeConfig)
    cache_dir: str | os.PathLike | None = None
    max_length: int | None = None

    def __post_init__(self) -> None:
        self.update.validate()

    @classmethod
    def from_pretrained(cls, model: str | os.PathLike, *, dtype: str | torch.dtype = "float32",
                        device: str | torch.device = "cpu", **settings: Any) -> Analyzer:
        """Load `model` (a directory, a PEFT adapter directory, or a built-in name: tiny, tiny-small,
        smollm2) and its tokenizer; `settings` are the other fields of `Analyzer`."""
        from sample_effect.models.loading import load_model
        from sample_effect.models.registry import resolve_model

        loaded, tokenizer = load_model(resolve_model(model), dtype, device)
        return cls(loaded, tokenizer, **settings)

    # -- what every method shares ------------------------------------------------------------

    @cached_property
    def chosen(self) -> dict[str, torch.nn.Parameter]:
        """The scored parameters, by name (`params` applied to the model's trainable parameters)."""
        from sample_effect.models.loading import select_parameters

        return dict(select_parameters(self.model, self.params))

    @cached_property
    def state(self) -> OptimizerState | None:
        """The optimiser state the simulated step starts from, loaded once (None: a fresh optimiser)."""
        from sample_effect.scoring.effects import resolve_state

        return resolve_state(self.model, self.chosen, self.update, self.optimizer_state)

    def tokenize(self, data: Data) -> list[TokenizedExample]:
        """`data` (a JSONL / Parquet / datasets path, `Example`s or already tokenized ones) as tokenized examples."""
        if isinstance(data, (str, os.PathLike)):
            data = load_examples(data)
        items = list(data)
        if not items:
            raise SampleEffectError("the dataset is empty")
        if all(isinstance(x, TokenizedExample) for x in items):
            return cast(list[TokenizedExample], items)
        if not all(isinstance(x, Example) for x in items):
            raise SampleEffectError("data must be a path, Examples or TokenizedExamples (not a mix)")
        return tokenize_examples(cast(list[Example], items), self.tokenizer, self.max_length)[0]

    def target(self, target: TargetLike) -> Target | TargetVector:
        """A target as the library takes it: a `Target` or resolved `TargetVector` as it is, data
        (a path or examples) as the `LossTarget` of its mean loss."""
        if isinstance(target, (Target, TargetVector)):
            return target
        return LossTarget(self.tokenize(target))

    def _run(self, data: Data) -> Any:
        from sample_effect.scoring.run import ScoringRun

        return ScoringRun(self.model, self.chosen, self.tokenize(data), self.update, self.state, self.compute)

    # -- questions ---------------------------------------------------------------------------

    def score(self, data: Data, target: TargetLike) -> Any:
        """The sample effect of every example of `data` toward `target`: an `Effects` in input order.

        With `cache_dir` set, shards are written there as they finish and a rerun with the same
        settings reads them back instead of recomputing (`rank --cache-dir`).
        """
        from sample_effect.scoring.run import InMemoryOutput, score
        from sample_effect.store.cache import CacheOutput

        output = InMemoryOutput() if self.cache_dir is None else CacheOutput(self.cache_dir, 256, False, self.params)
        goal = self.target(target)
        if self.cache_dir is not None and isinstance(goal, TargetVector):
            raise ConfigError("Analyzer.score", "<cache_dir> keys a run by its Target; pass a Target, not a TargetVector")
        return score(self._run(data), goal, output)

    def explain(self, data: Data) -> str:
        """The engine's plan for scoring `data` (the path each layer takes and why, and expected peak memory)."""
        from sample_effect.engine.planner import make_plan

        return make_plan(self.model, self.chosen, self.tokenize(data), self.update, self.compute).render()

    def project(self, data: Data, out_dir: str | os.PathLike, projection: Any = None) -> Any:
        """Write every example's projected update P d(s) under `out_dir` (resumable) and return the loaded
        `ProjectionCache`, whose `scores(G)` estimates effects toward any later target."""
        from sample_effect.engine.projection import ProjectionConfig
        from sample_effect.store.projection import load_projection, project_examples

        cfg = projection or ProjectionConfig()
        project_examples(self.model, self.chosen, self.tokenize(data), out_dir, self.update, cfg, self.state,
                         self.compute)
        return load_projection(out_dir)

    def predict_sft(self, data: Data, target: TargetLike, sft: Any = None, *, name: str = "data",
                    replicates: int = 8) -> Any:
        """The predicted per-step change of `target` over the SFT trainer's schedule `sft` (an `SFTConfig`;
        None: the trainer's defaults) on `data`: an `SFTCurve` (positive effect, noise effect, cumulative).

        The simulated step is the trainer's own (its optimiser, betas, weight decay and clipping).
        """
        from sample_effect.growth.sft import predict_sft_curve
        from sample_effect.scoring.run import ScoringRun
        from sample_effect.training.sft import SFTConfig

        examples = self.tokenize(data)
        goal = self.target(target)
        g = ScoringRun(self.model, self.chosen, examples, self.update, self.state, self.compute).resolve(goal)
        hessian = Target.coerce(goal).hessian_examples()
        return predict_sft_curve(self.model, self.chosen, examples, g, sft or SFTConfig(), name, replicates,
                                 target_examples=hessian, compute=self.compute)

    def predict_rl(self, prompts: str | os.PathLike | Sequence[Any], reward: str | Callable[..., float],
                   target: TargetLike, config: Any = None, **settings: Any) -> Any:
        """The predicted growth of `target` per GRPO step from this checkpoint, with its terms, interval and
        warnings: an `RLPrediction` (`growth` is the typed `RLGrowth`, `record` its JSON form; `ranking()`
        ranks the prompts).

        `prompts` is an RL prompt file (`{"id", "prompt", "answer"}` per line) or `RLPrompt`s; `reward`
        a built-in name (kk, kk-partial, exact, boxed) or a function; `config` an `RLPredictConfig`,
        whose fields `settings` override. The step simulated is this analyzer's `update`.
        """
        from sample_effect.growth.rl import predict_rl
        from sample_effect.rollouts.prompts import load_rl_prompts

        items = load_rl_prompts(prompts) if isinstance(prompts, (str, os.PathLike)) else list(prompts)
        settings.setdefault("compute", self.compute)
        return predict_rl(self.model, self.tokenizer, items, reward, self.target(target), self.update, config,
                          params=self.chosen, state=self.state, **settings)

    def validate_linearization(self, data: Data, target_data: Data, lrs: Sequence[float] = (1e-4, 1e-3)) -> Any:
        """Take one real optimiser step per example and lr on a copy of the model and set the measured
        change of the mean target loss against lr x e(s): a `LinearizationResult` (correlations per lr)."""
        from sample_effect.validation.linearization import linearization_check

        return linearization_check(self.model, self.chosen, self.tokenize(data), self.tokenize(target_data),
                                   self.update, lrs, self.compute)

    def with_settings(self, **changes: Any) -> Analyzer:
        """A copy sharing the model and tokenizer, with some fields changed (e.g. another `update`)."""
        return replace(self, **changes)


__all__ = ["Analyzer", "Data", "TargetLike"]
