"""The settings of the Knights-and-Knaves demo (`sample_effect.recipes.kk_demo`) and what its stages produce.

`DemoConfig` holds the sizes, seeds and recipes of every stage (the `demo` command's flags, with
the same defaults); `DemoResult` is what the report is written from.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sample_effect.data.kk import STYLES
from sample_effect.errors import ConfigError, literal

START_STEPS = 240  # SFT steps of an RL start (tests/models/test_sft_band.py measures this recipe)


@dataclass
class DemoConfig:
    """Sizes, seeds and recipes of the demo; the defaults are the `demo` command's (about 8 minutes on 2 cores)."""

    out: Path = Path("demo_out")  # output directory
    model: str = "tiny"  # 'tiny' (shipped), 'smollm2', or a local model directory
    n_pool: int = 40  # puzzles in the SFT pool, each in 3 styles
    n_target: int = 24  # held-out target puzzles
    n_test: int = 24  # held-out test puzzles for greedy accuracy
    top_k: int = 24  # examples per selection
    epochs: float = 20.0  # fine-tuning epochs over the k examples
    random_draws: int = 5  # random k-subsets fine-tuned next to top-k and bottom-k
    lr: float = 2e-4  # fine-tuning and simulated AdamW lr
    max_new_tokens: int = 320  # greedy generation limit for accuracy
    seed: int = 0  # seed of the puzzles, the random selections and training
    rl_starts: list[str] = field(default_factory=lambda: ["answer-only", "short-cot"])  # one SFT start per style
    rl_start_data: dict[str, Path] = field(default_factory=dict)  # more SFT starts: NAME -> SFT data file
    start_examples: int = 160  # SFT examples per style start
    start_steps: int = START_STEPS  # SFT steps per RL start
    rl_prompts: int = 16  # GRPO training puzzles
    rl_eval: int = 12  # held-out puzzles of the RL accuracy curve
    rl_steps: int = 8  # real GRPO steps per start
    rl_lr: float = 2e-4  # GRPO lr
    group_size: int = 8  # rollouts per prompt
    rl_prompts_per_step: int = 4  # prompts per GRPO step
    rl_max_new_tokens: int = 200  # rollout length limit
    rl_runs: int = 1  # real GRPO runs per start (2+: error bars on the actual side)
    rl_eval_samples: int = 4  # completions per held-out puzzle at each accuracy measurement
    rl_target_samples: int = 4  # completions per held-out puzzle for the accuracy target
    progress: bool = True  # progress bars and `demo:` progress lines

    def validate(self) -> DemoConfig:
        """Check every setting before anything is loaded or written (ConfigError naming the field); returns self.

        `out` and the `rl_start_data` files are checked by `run_demo`, after this.

        A start's NAME becomes a directory (checkpoints/start-NAME) and its label sft-NAME, so it is
        limited to letters, digits, '.', '_' and '-', and may not be one of `rl_starts`.
        """
        for name in ("n_pool", "n_target", "n_test", "top_k", "max_new_tokens", "random_draws", "start_examples",
                     "start_steps", "rl_prompts", "rl_eval", "rl_steps", "rl_prompts_per_step", "rl_max_new_tokens",
                     "rl_runs", "rl_eval_samples"):
            if getattr(self, name) < 1:
                raise ConfigError("DemoConfig", f"<{name}> must be >= 1, got {getattr(self, name)}")
        for name in ("epochs", "lr", "rl_lr"):
            x = getattr(self, name)
            if not (math.isfinite(x) and x > 0):
                raise ConfigError("DemoConfig", f"<{name}> must be a positive number, got {x}")
        if self.group_size < 2:
            raise ConfigError("DemoConfig", f"<group_size> must be >= 2 (GRPO advantages need a group), got {self.group_size}")
        if self.rl_target_samples < 2:
            raise ConfigError("DemoConfig", f"<rl_target_samples> must be >= 2 (leave-one-out baseline), got "
                              f"{self.rl_target_samples}")
        if self.rl_prompts_per_step > self.rl_prompts:
            raise ConfigError("DemoConfig", f"<rl_prompts_per_step> ({self.rl_prompts_per_step}) exceeds <rl_prompts> "
                              f"({self.rl_prompts})")
        bad = [s for s in self.rl_starts if s not in STYLES]
        if bad:
            raise ConfigError("DemoConfig", f"unknown <rl_starts> style {literal(repr(bad[0]))}; choose from {', '.join(STYLES)}")
        for name in self.rl_start_data:
            if not name or not all(c.isalnum() or c in "._-" for c in name) or name.startswith("."):
                raise ConfigError("DemoConfig", f"<rl_start_data> name {literal(repr(name))} must be letters, digits, "
                                  "'.', '_' or '-'")
            if name in self.rl_starts:
                raise ConfigError("DemoConfig", f"<rl_start_data> name {literal(repr(name))} is used twice (<rl_starts> "
                                  "and <rl_start_data> share names)")
        return self


@dataclass
class DemoResult:
    """What the demo's stages produced, as the report reads it."""

    model_desc: str  # how the report names the model (a built-in name, or a path relative to the working directory)
    table: Any  # the ranked effects table (effects.csv), with a `style` column
    per_style: Any  # mean, std and count of the effect per response style
    summary: Any  # one row per selection: target loss, accuracy, predicted and actual drop (selection.csv)
    k: int  # examples per selection
    steps: int  # SFT steps of each selection's run
    elapsed: float  # seconds from the model load to the report
    rl: dict[str, Any] | None = None  # part 4 (RL from SFT starts); None when skipped
    verdict: dict[str, Any] | None = None  # the selection verdict; None with fewer than 2 random draws
