"""`sample-effect demo`: the command line of the Knights-and-Knaves demo (`sample_effect.recipes.kk_demo`)."""

from __future__ import annotations

import argparse

from sample_effect.cli.options import SubParsers, add_common_args
from sample_effect.recipes.kk_demo import START_STEPS


def add_parsers(sub: SubParsers) -> None:
    """Register `demo`."""
    p = sub.add_parser("demo", help="run the main job end to end on generated Knights-and-Knaves data",
                       description="Generate Knights-and-Knaves puzzles, rank an SFT pool by sample effect toward a "
                       "held-out target, fine-tune on top-k vs random-k vs bottom-k, and write a report (offline, CPU).")
    p.add_argument("--out", default="demo_out", help="output directory (default demo_out)")
    p.add_argument("--model", default="tiny", help="'tiny' (default, shipped), 'smollm2', or a local model directory")
    p.add_argument("--n-pool", type=int, default=40, help="puzzles in the SFT pool, each in 3 styles (default 40)")
    p.add_argument("--n-target", type=int, default=24, help="held-out target puzzles (default 24)")
    p.add_argument("--n-test", type=int, default=24, help="held-out test puzzles for accuracy (default 24)")
    p.add_argument("--top-k", type=int, default=24, help="examples selected for fine-tuning (default 24)")
    p.add_argument("--epochs", type=float, default=20.0, help="fine-tuning epochs over the k examples (default 20)")
    p.add_argument("--random-draws", type=int, default=5,
                   help="random k-subsets fine-tuned for comparison with top-k and bottom-k (default 5; >= 2 gives an interval)")
    p.add_argument("--lr", type=float, default=2e-4, help="fine-tuning and simulated AdamW lr (default 2e-4)")
    p.add_argument("--max-new-tokens", type=int, default=320, help="greedy generation limit for accuracy (default 320)")
    p.add_argument("--seed", type=int, default=0, help="seed of the puzzles, the random selections and training")
    g = p.add_argument_group("RL from SFT starts (part 4 of the report)")
    g.add_argument("--rl-starts", default="answer-only,short-cot",
                   help="comma-separated response styles; each is one SFT start (--start-examples fresh puzzles in that style) "
                        "from which RL growth is predicted and a real GRPO run made; '' skips the RL part "
                        "(default answer-only,short-cot)")
    g.add_argument("--rl-start-data", action="append", default=None, metavar="NAME=FILE",
                   help="one more SFT start, sft-NAME, fine-tuned on the SFT data in FILE (JSONL, Parquet or a datasets "
                        "directory, the `rank --data` format) with the same recipe; repeat for several "
                        "(e.g. redistilled=redistilled.jsonl from `redistill`; default: none)")
    g.add_argument("--start-examples", type=int, default=160,
                   help="SFT examples per RL start: fresh puzzles (2-3 people) in the start's style (default 160)")
    g.add_argument("--start-steps", type=int, default=START_STEPS,
                   help="SFT steps per RL start (AdamW, batch 4, --lr; default 240, 6 epochs over 160 examples)")
    g.add_argument("--rl-prompts", type=int, default=16, help="GRPO training puzzles (2-3 people; default 16)")
    g.add_argument("--rl-eval", type=int, default=12, help="held-out puzzles for the RL accuracy curve (default 12)")
    g.add_argument("--rl-steps", type=int, default=8, help="real GRPO steps per start (default 8)")
    g.add_argument("--rl-lr", type=float, default=2e-4, help="GRPO lr (AdamW, clip 1.0; default 2e-4)")
    g.add_argument("--group-size", type=int, default=8, help="rollouts per prompt (default 8)")
    g.add_argument("--rl-prompts-per-step", type=int, default=4, help="prompts per GRPO step (default 4)")
    g.add_argument("--rl-max-new-tokens", type=int, default=200, help="rollout length limit (default 200)")
    add_common_args(p)
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> None:
    """`sample-effect demo`: run the demo recipe with the parsed flags."""
    from sample_effect.recipes.kk_demo import run_demo

    run_demo(args)
