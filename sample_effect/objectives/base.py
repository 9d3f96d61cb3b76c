"""Objectives: what one example's loss is, as a weighted sum of per-sequence losses.

Every engine path (ghost factors, vmap, forward-mode JVP) and every trainer works with an
example's loss in one form,

    L(s) = sum_k w_k * l(sequence_k),

where `sequence_loss` maps a padded batch of sequences to one loss each and `sequence_weights`
gives the fixed (non-differentiated) weights of an example's sequences. That form covers:

- `SFTObjective`: l = mean response-token cross-entropy, w_k = 1 / n_responses (an example with
  several responses has their mean gradient);
- `GRPOObjective`: for a prompt group of G rollouts, the first on-policy GRPO step's loss is the
  token-mean over the group's completion tokens of -A_i log pi(y_i,t) (ratio 1, clip inactive), so
  l = -sum_t log pi(y_t) over completion tokens and w_i = A_i / N, N the group's completion tokens;
- `ReinforceObjective`: -sum_i c_i log pi_T(y_i|x) / n, c_i = r_i - b_i (the accuracy target's
  estimator), with temperature T.

The per-sequence weights ride on the example (`TokenizedExample.weights`) for the RL objectives,
since they come from the rollouts' rewards; a new objective is one new subclass.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch

from sample_effect.data.examples import TokenizedExample
from sample_effect.errors import SampleEffectError
from sample_effect.objectives.losses import sft_sequence_loss, token_logprobs


class Objective(ABC):
    """Per-sequence loss and per-sequence weights; an example's loss is their weighted sum."""

    name: str = "objective"

    @abstractmethod
    def sequence_loss(self, logits: torch.Tensor, input_ids: torch.Tensor, label_mask: torch.Tensor) -> torch.Tensor:
        """One loss per sequence: logits [..., T, V], ids [..., T], mask [..., T-1] -> [...]."""

    @abstractmethod
    def sequence_weights(self, example: TokenizedExample) -> list[float]:
        """The fixed weight of each of the example's sequences in its loss."""

    def weights_of(self, examples: Sequence[TokenizedExample], owners: Sequence[int]) -> list[float]:
        """Weight of each flattened sequence, given the index of its example (sequences in order)."""
        per_example: dict[int, list[float]] = {}
        seen: dict[int, int] = {}
        out = []
        for o in owners:
            if o not in per_example:
                per_example[o] = self.sequence_weights(examples[o])
            k = seen.get(o, 0)
            seen[o] = k + 1
            out.append(per_example[o][k])
        return out


class SFTObjective(Objective):
    """Supervised fine-tuning: mean response-token cross-entropy, averaged over an example's responses."""

    name = "sft"

    def sequence_loss(self, logits: torch.Tensor, input_ids: torch.Tensor, label_mask: torch.Tensor) -> torch.Tensor:
        return sft_sequence_loss(logits, input_ids, label_mask)

    def sequence_weights(self, example: TokenizedExample) -> list[float]:
        return [1.0 / example.n_responses] * example.n_responses


def sequence_logprob_sum(logits: torch.Tensor, input_ids: torch.Tensor, label_mask: torch.Tensor) -> torch.Tensor:
    """sum_t log pi(x_t | x_<t) over the masked (completion) positions of each sequence ([..., T] -> [...])."""
    lp = token_logprobs(logits, input_ids)
    return (lp * label_mask.to(lp.dtype)).sum(-1)


class _WeightedLogprobObjective(Objective):
    """l = -sum_t log pi_T(y_t) over completion tokens; the weights ride on the example."""

    temperature: float = 1.0

    def sequence_loss(self, logits: torch.Tensor, input_ids: torch.Tensor, label_mask: torch.Tensor) -> torch.Tensor:
        if self.temperature != 1.0:
            logits = logits / self.temperature
        return -sequence_logprob_sum(logits, input_ids, label_mask)

    def sequence_weights(self, example: TokenizedExample) -> list[float]:
        if example.weights is None:
            raise SampleEffectError(
                f"example '{example.id}' has no per-sequence weights; the {self.name} objective needs examples "
                "built from rollouts (sample_effect.objectives.rollout_example)"
            )
        return list(example.weights)


class GRPOObjective(_WeightedLogprobObjective):
    """The first on-policy GRPO step on one prompt group: token-mean over the group of -A_i log pi(y_i,t)."""

    name = "grpo"


class ReinforceObjective(_WeightedLogprobObjective):
    """REINFORCE: -(1/n) sum_i c_i log pi_T(y_i|x), c_i the rollouts' baseline-corrected rewards."""

    name = "reinforce"

    def __init__(self, temperature: float = 1.0) -> None:
        self.temperature = float(temperature)


SFT = SFTObjective()


def rollout_example(example_id: str, ids: Sequence[torch.Tensor], starts: Sequence[int], weights: Sequence[float]) -> TokenizedExample:
    """A prompt group as one example: its rollouts (prompt + completion ids, completion start) and their weights."""
    if not (len(ids) == len(starts) == len(weights)) or not ids:
        raise SampleEffectError(f"group '{example_id}': ids, starts and weights must be non-empty and of one length")
    return TokenizedExample(example_id, list(ids), list(starts), weights=[float(w) for w in weights])


def grpo_example(example_id: str, ids: Sequence[torch.Tensor], starts: Sequence[int], advantages: Sequence[float]) -> TokenizedExample:
    """A GRPO group as one example: weights A_i / N with N the group's completion tokens (the trainer's token mean)."""
    n_tokens = sum(int(s.shape[0]) - r for s, r in zip(ids, starts))
    if n_tokens < 1:
        raise SampleEffectError(f"group '{example_id}' has no completion tokens")
    return rollout_example(example_id, ids, starts, [float(a) / n_tokens for a in advantages])
