"""Target directions G: what "the model got better" means for an effect.

- `LossTarget`: G = -grad of the mean loss over a target set (validation / test SFT data);
- `SelfTarget`: the same over the scored data itself (the paper's <E grad l(s), E grad l>);
- `DirectionTarget`: a fixed vector theta_final - theta_base read from two checkpoints, e.g.
  base -> RL checkpoint, optionally normalised to unit length;
- `AccuracyTarget`: G = grad of the test accuracy, a REINFORCE estimate from completions sampled
  on test prompts (computed by `sample_effect.growth.rl.accuracy_target_vector`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from sample_effect.data.examples import TokenizedExample
from sample_effect.engine.core import ComputeConfig, mean_loss_gradient
from sample_effect.errors import SampleEffectError
from sample_effect.models.loading import accumulation_dtype, check_model_dir, quiet_hf_progress


@dataclass
class LossTarget:
    """G = minus the gradient of the mean per-example loss over `examples`."""

    examples: Sequence[TokenizedExample]
    name: str = "loss"


@dataclass
class SelfTarget:
    """G = minus the gradient of the mean loss over the scored examples themselves."""

    name: str = "self"


@dataclass
class DirectionTarget:
    """G = theta_final - theta_base over the chosen parameters (unit length if `normalize`)."""

    base: str | os.PathLike
    final: str | os.PathLike
    normalize: bool = False
    name: str = field(default="direction")


@dataclass
class AccuracyTarget:
    """G = grad of test accuracy = mean over `prompts` of E_{y~pi_T}[(r(x,y) - b) grad log pi_T(y|x)], estimated.

    REINFORCE from `n_samples` completions per prompt, sampled at `temperature` (T) with a generator
    seeded by `seed`, up to `max_new_tokens`; grad log pi_T(y|x) is the gradient of the *sum* of the
    completion tokens' log-probs under softmax(logits / T). `baseline` is "loo" (per-prompt
    leave-one-out mean of the other samples' rewards: unbiased, and exactly 0 for a prompt whose
    rewards are all equal) or "none". `reward` is a reward callable or a name for `get_reward`;
    `prompts` are `RLPrompt`s; `tokenizer` is the scored model's (sampling decodes text for the reward).
    """

    prompts: Sequence[Any]
    reward: Callable[..., float] | str
    tokenizer: Any = None
    n_samples: int = 8
    temperature: float = 1.0
    seed: int = 0
    max_new_tokens: int = 256
    baseline: str = "loo"
    name: str = "accuracy"


Target = LossTarget | SelfTarget | DirectionTarget | AccuracyTarget


@dataclass
class TargetVector:
    """A resolved target: G per parameter name plus what is known about it."""

    vector: dict[str, torch.Tensor]
    kind: str
    target_loss: float | None = None
    stats: dict[str, float] = field(default_factory=dict)  # e.g. accuracy and standard errors (AccuracyTarget)

    def norm(self) -> float:
        """Euclidean norm of G over all its parameters, in float64 (for reports and normalising)."""
        return float(sum((v.double() ** 2).sum() for v in self.vector.values()) ** 0.5)


def _named_parameters_of(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForCausalLM

    quiet_hf_progress()
    p = check_model_dir(path)
    try:
        model = AutoModelForCausalLM.from_pretrained(str(p), dtype=torch.float64)
    except Exception as exc:
        raise SampleEffectError(f"could not load checkpoint {p}: {str(exc).splitlines()[0]}") from None
    return {n: t.detach() for n, t in model.named_parameters()}


def direction_vector(
    base: str | os.PathLike, final: str | os.PathLike, params: Mapping[str, torch.Tensor], normalize: bool = False
) -> dict[str, torch.Tensor]:
    """theta_final - theta_base for each chosen parameter, computed in float64; errors on any name/shape mismatch."""
    a, b = _named_parameters_of(base), _named_parameters_of(final)
    if set(a) != set(b):
        only = sorted(set(a) ^ set(b))
        raise SampleEffectError(
            f"direction checkpoints differ in parameter names ({len(only)} differ, e.g. '{only[0]}'): {base} vs {final}"
        )
    mismatched = [n for n in a if a[n].shape != b[n].shape]
    if mismatched:
        n = mismatched[0]
        raise SampleEffectError(
            f"direction checkpoints differ in the shape of '{n}': {tuple(a[n].shape)} vs {tuple(b[n].shape)}"
        )
    out: dict[str, torch.Tensor] = {}
    for n, p in params.items():
        if n not in a:
            raise SampleEffectError(f"direction checkpoints have no parameter '{n}' (scored model's name)")
        if a[n].shape != p.shape:
            raise SampleEffectError(
                f"direction parameter '{n}' has shape {tuple(a[n].shape)}, the scored model {tuple(p.shape)}"
            )
        out[n] = b[n] - a[n]
    if normalize:
        norm = sum((v**2).sum() for v in out.values()) ** 0.5
        if norm == 0:
            raise SampleEffectError("direction is zero (the two checkpoints are identical); cannot normalise")
        out = {n: v / norm for n, v in out.items()}
    return out


def resolve_target(
    target: Target,
    model: torch.nn.Module,
    params: Mapping[str, torch.Tensor],
    scored: Sequence[TokenizedExample],
    compute: ComputeConfig | None = None,
) -> TargetVector:
    """Compute G for `target` over the chosen parameters, in the accumulation dtype."""
    acc = accumulation_dtype(next(iter(params.values())).dtype)
    if isinstance(target, (LossTarget, SelfTarget)):
        examples = target.examples if isinstance(target, LossTarget) else scored
        grad, loss = mean_loss_gradient(model, params, examples, compute)
        return TargetVector({n: -g for n, g in grad.items()}, target.name, target_loss=loss)
    if isinstance(target, DirectionTarget):
        vec = direction_vector(target.base, target.final, params, target.normalize)
        return TargetVector({n: v.to(dtype=acc, device=params[n].device) for n, v in vec.items()}, target.name)
    if isinstance(target, AccuracyTarget):
        from sample_effect.growth.rl import accuracy_target_vector

        return accuracy_target_vector(target, model, params, compute)
    raise SampleEffectError(f"unknown target {target!r}")
