"""Trainers whose losses are exactly the ones the engine linearises (imported from `sample_effect.objectives.losses`).

- `train_sft`: AdamW on the mean example SFT loss (response tokens only);
- `train_grpo`: group-relative policy optimisation with the token-mean GRPO loss;
- `redistill`: sample from a (RL) checkpoint, keep correct completions, write SFT data.
"""

from sample_effect.training.common import load_optimizer_into, save_checkpoint
from sample_effect.training.grpo import GRPOConfig, GRPOHooks, train_grpo
from sample_effect.training.redistill import RedistillConfig, redistill
from sample_effect.training.sft import SFTConfig, train_sft

__all__ = [
    "GRPOConfig",
    "GRPOHooks",
    "RedistillConfig",
    "SFTConfig",
    "load_optimizer_into",
    "redistill",
    "save_checkpoint",
    "train_grpo",
    "train_sft",
]
