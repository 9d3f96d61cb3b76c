"""Trainers whose losses are exactly the ones the engine linearises (imported from `sample_effect.losses`).

- `train_sft`: AdamW on the mean example SFT loss (response tokens only);
- `train_grpo`: group-relative policy optimisation with the token-mean GRPO loss;
- `redistill`: sample from a (RL) checkpoint, keep correct completions, write SFT data.
"""

from .common import load_optimizer_into, save_checkpoint
from .grpo import GRPOConfig, RLPrompt, load_rl_prompts, train_grpo
from .redistill import redistill
from .sft import SFTConfig, train_sft

__all__ = [
    "GRPOConfig",
    "RLPrompt",
    "SFTConfig",
    "load_optimizer_into",
    "load_rl_prompts",
    "redistill",
    "save_checkpoint",
    "train_grpo",
    "train_sft",
]
