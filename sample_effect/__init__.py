"""sample-effect: which fine-tuning examples will move a model, and how fast training will improve it.

The sample effect of an example s toward a target direction G is e(s) = <delta_theta(s), G> / lr,
the first-order change of the target per unit learning rate after one optimiser step on s.
"""

from sample_effect.data.examples import Example, TokenizedExample, load_examples, tokenize_examples
from sample_effect.engine.core import ComputeConfig
from sample_effect.engine.effects import (
    EffectResult,
    compute_effects,
    rank_table,
    score_examples,
    score_examples_result,
)
from sample_effect.errors import SampleEffectError
from sample_effect.models.loading import load_model, select_parameters
from sample_effect.objectives.losses import (
    grpo_advantages,
    grpo_loss,
    sft_sequence_loss,
    token_logprobs,
)
from sample_effect.targets.core import DirectionTarget, LossTarget, SelfTarget
from sample_effect.update.optim import OptimizerState, UpdateConfig, load_optimizer_state

__version__ = "0.1.0"

__all__ = [
    "ComputeConfig",
    "DirectionTarget",
    "EffectResult",
    "Example",
    "LossTarget",
    "OptimizerState",
    "SampleEffectError",
    "SelfTarget",
    "TokenizedExample",
    "UpdateConfig",
    "compute_effects",
    "grpo_advantages",
    "grpo_loss",
    "load_examples",
    "load_model",
    "load_optimizer_state",
    "rank_table",
    "score_examples",
    "score_examples_result",
    "select_parameters",
    "sft_sequence_loss",
    "token_logprobs",
    "tokenize_examples",
]
