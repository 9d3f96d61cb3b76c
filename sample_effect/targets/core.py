"""Target directions G: what "the model got better" means for an effect.

- `LossTarget`: G = -grad of the mean loss over a target set (validation / test SFT data);
- `SelfTarget`: the same over the scored data itself (the paper's <E grad l(s), E grad l>);
- `DirectionTarget`: a fixed vector theta_final - theta_base read from two checkpoints, e.g.
  base -> RL checkpoint, optionally normalised to unit length;
- `AccuracyTarget`: G = grad of the test accuracy, a REINFORCE estimate from completions sampled
  on test prompts (`sample_effect.targets.accuracy`).

Every target is a `Target`: `resolve(model, params, scored, compute)` gives its `TargetVector`, and
`resolve_distributed` the same on every rank of a torchrun job. A new kind of target is one new
subclass; nothing else branches on the kind.
"""

from __future__ import annotations

import hashlib
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from sample_effect.data.examples import TokenizedExample
from sample_effect.engine.core import ComputeConfig, mean_loss_gradient
from sample_effect.engine.keys import hash_examples
from sample_effect.engine.vectors import TargetVector
from sample_effect.errors import SampleEffectError
from sample_effect.models.loading import accumulation_dtype, check_model_dir, quiet_hf_progress


class Target(ABC):
    """What "better" means: a direction G over the scored parameters, resolved against a model.

    Besides `resolve`, a target declares what it can do, and the growth predictions ask it rather
    than its type: `label` (how reports name it), `linear_in_theta` (T = <theta, G> for a fixed G,
    so its Hessian and its noise term are zero), `estimated_from_samples` (G is a Monte Carlo
    estimate with its own sampling error), `hessian_examples()` (the examples whose mean loss
    gives the Hessian-vector products of the noise terms; None: no Hessian) and
    `uses_scored_examples` (G is defined by the scored examples themselves).
    """

    name: str
    label: ClassVar[str] = "a target"
    estimated_from_samples: ClassVar[bool] = False
    uses_scored_examples: ClassVar[bool] = False

    @property
    def linear_in_theta(self) -> bool:
        """Whether T = <theta, G> for a fixed G: its Hessian, and so its noise term, is zero."""
        return False

    def hessian_examples(self) -> Sequence[TokenizedExample] | None:
        """The examples whose mean loss L defines T = -L, for Hessian-vector products of H_T (None: none available)."""
        return None

    def key_digest(self) -> bytes | None:
        """Bytes that identify G before it is resolved, so a stored result can be found by its settings alone
        (None: G must be resolved and the result keyed by the vector itself)."""
        return None

    @staticmethod
    def coerce(target: Target | TargetVector) -> Target:
        """`target` as a Target: a resolved `TargetVector` becomes a `PrecomputedTarget`; anything else is an error."""
        if isinstance(target, TargetVector):
            return PrecomputedTarget(target)
        return _checked(target)

    @abstractmethod
    def resolve(
        self, model: torch.nn.Module, params: Mapping[str, torch.Tensor], scored: Sequence[TokenizedExample],
        compute: ComputeConfig | None = None,
    ) -> TargetVector:
        """G over `params` (in the accumulation dtype); `scored` are the examples being scored."""

    def resolve_distributed(
        self, model: torch.nn.Module, params: Mapping[str, torch.Tensor], scored: Sequence[TokenizedExample],
        compute: ComputeConfig | None = None,
    ) -> TargetVector:
        """G on every rank of a torchrun job: resolved once on rank 0 and sent to the others."""
        from sample_effect.runtime import distributed as dist

        if not dist.active():
            return self.resolve(model, params, scored, compute)
        g = self.resolve(model, params, scored, compute) if dist.rank() == 0 else None
        g = dist.broadcast_object(g)
        return TargetVector({n: v.to(params[n].device) for n, v in g.vector.items()}, g.kind, g.target_loss, g.stats)


class _MeanLossTarget(Target):
    """G = minus the gradient of the mean example loss over a set (which set: `examples_for`)."""

    @abstractmethod
    def examples_for(self, scored: Sequence[TokenizedExample]) -> Sequence[TokenizedExample]:
        """The examples whose mean loss defines G."""

    def resolve(
        self, model: torch.nn.Module, params: Mapping[str, torch.Tensor], scored: Sequence[TokenizedExample],
        compute: ComputeConfig | None = None,
    ) -> TargetVector:
        grad, loss = mean_loss_gradient(model, params, self.examples_for(scored), compute)
        return TargetVector({n: -g for n, g in grad.items()}, self.name, target_loss=loss)

    def resolve_distributed(
        self, model: torch.nn.Module, params: Mapping[str, torch.Tensor], scored: Sequence[TokenizedExample],
        compute: ComputeConfig | None = None,
    ) -> TargetVector:
        """With several processes each takes a block of the set, and the parts are summed."""
        from sample_effect.runtime import distributed as dist

        if not dist.active():
            return self.resolve(model, params, scored, compute)
        examples = self.examples_for(scored)
        part = [examples[i] for i in dist.block(len(examples))]
        acc = accumulation_dtype(next(iter(params.values())).dtype)
        if part:
            grad, loss = mean_loss_gradient(model, params, part, compute)
            w = len(part) / len(examples)  # the part's mean -> its share of the whole mean
            grad = {n: g * w for n, g in grad.items()}
            loss *= w
        else:
            grad = {n: torch.zeros(p.shape, dtype=acc, device=p.device) for n, p in params.items()}
            loss = 0.0
        for g in grad.values():
            dist.all_reduce_sum_(g)
        total = torch.tensor([loss], dtype=torch.float64)
        dist.all_reduce_sum_(total)
        return TargetVector({n: -g for n, g in grad.items()}, self.name, target_loss=float(total.item()))


@dataclass
class LossTarget(_MeanLossTarget):
    """G = minus the gradient of the mean per-example loss over `examples`."""

    examples: Sequence[TokenizedExample]
    name: str = "loss"
    label: ClassVar[str] = "a loss target"

    def examples_for(self, scored: Sequence[TokenizedExample]) -> Sequence[TokenizedExample]:
        """The target set."""
        return self.examples

    def key_digest(self) -> bytes:
        """The target set's tokens: G is a function of them and the weights."""
        h = hashlib.sha256(b"loss")
        hash_examples(h, self.examples)
        return h.digest()

    def hessian_examples(self) -> Sequence[TokenizedExample] | None:
        """The target set: T = -(its mean loss) has Hessian-vector products."""
        return self.examples


@dataclass
class SelfTarget(_MeanLossTarget):
    """G = minus the gradient of the mean loss over the scored examples themselves."""

    name: str = "self"
    label: ClassVar[str] = "a self target"
    uses_scored_examples: ClassVar[bool] = True

    def examples_for(self, scored: Sequence[TokenizedExample]) -> Sequence[TokenizedExample]:
        """The scored examples."""
        return scored

    def key_digest(self) -> bytes:
        """G is a function of the scored examples, which the settings key already holds."""
        return hashlib.sha256(b"self").digest()


@dataclass
class DirectionTarget(Target):
    """G = theta_final - theta_base over the chosen parameters (unit length if `normalize`)."""

    base: str | os.PathLike
    final: str | os.PathLike
    normalize: bool = False
    name: str = field(default="direction")
    label: ClassVar[str] = "a fixed direction"

    @property
    def linear_in_theta(self) -> bool:
        """A fixed direction is linear in theta."""
        return True

    def resolve(
        self, model: torch.nn.Module, params: Mapping[str, torch.Tensor], scored: Sequence[TokenizedExample],
        compute: ComputeConfig | None = None,
    ) -> TargetVector:
        acc = accumulation_dtype(next(iter(params.values())).dtype)
        vec = direction_vector(self.base, self.final, params, self.normalize)
        return TargetVector({n: v.to(dtype=acc, device=params[n].device) for n, v in vec.items()}, self.name)


@dataclass
class AccuracyTarget(Target):
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
    label: ClassVar[str] = "an accuracy target"
    estimated_from_samples: ClassVar[bool] = True

    def resolve(
        self, model: torch.nn.Module, params: Mapping[str, torch.Tensor], scored: Sequence[TokenizedExample],
        compute: ComputeConfig | None = None,
    ) -> TargetVector:
        return accuracy_target_vector(self, model, params, compute)


@dataclass
class PrecomputedTarget(Target):
    """A target given as its resolved vector G (a `TargetVector`), used as it is on every rank.

    Nothing is known about T beyond G, so it has no Hessian; a vector of kind "direction" is a
    fixed direction, linear in theta.
    """

    vector: TargetVector
    name: str = ""
    label: ClassVar[str] = "a precomputed target vector"

    def __post_init__(self) -> None:
        self.name = self.name or self.vector.kind

    @property
    def linear_in_theta(self) -> bool:
        """Whether the vector is a fixed direction (kind "direction")."""
        return self.vector.kind == "direction"

    def resolve(
        self, model: torch.nn.Module, params: Mapping[str, torch.Tensor], scored: Sequence[TokenizedExample],
        compute: ComputeConfig | None = None,
    ) -> TargetVector:
        """The vector itself."""
        return self.vector

    def resolve_distributed(
        self, model: torch.nn.Module, params: Mapping[str, torch.Tensor], scored: Sequence[TokenizedExample],
        compute: ComputeConfig | None = None,
    ) -> TargetVector:
        """The vector itself: every rank already holds it."""
        return self.vector


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
    return _checked(target).resolve(model, params, scored, compute)


def resolve_target_distributed(
    target: Target,
    model: torch.nn.Module,
    params: Mapping[str, torch.Tensor],
    scored: Sequence[TokenizedExample],
    compute: ComputeConfig | None = None,
) -> TargetVector:
    """G on every rank of a torchrun job (a loss target summed over blocks of its set, others from rank 0)."""
    return _checked(target).resolve_distributed(model, params, scored, compute)


def _checked(target: object) -> Target:
    """`target` if it is a Target, else a clear error (a string or a raw dict is a common slip)."""
    if not isinstance(target, Target):
        raise SampleEffectError(f"unknown target {target!r}: a target is a sample_effect Target (LossTarget, ...)")
    return target


def accuracy_target_vector(
    target: AccuracyTarget,
    model: torch.nn.Module,
    params: Mapping[str, torch.Tensor],
    compute: ComputeConfig | None = None,
) -> TargetVector:
    """Resolve an `AccuracyTarget`: sample its completions, then the REINFORCE gradient and its statistics."""
    from sample_effect.targets.accuracy import accuracy_gradient

    vec, stats = accuracy_gradient(target, model, params, compute)
    return TargetVector(vec, target.name, stats=stats)
