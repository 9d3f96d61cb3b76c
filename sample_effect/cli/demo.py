"""`sample-effect demo`: the command line of the Knights-and-Knaves demo (`sample_effect.recipes.kk_demo`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from sample_effect.cli.options import SubParsers, add_common_args
from sample_effect.errors import SampleEffectError
from sample_effect.recipes.kk_demo_config import START_STEPS, DemoConfig


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
    g.add_argument("--rl-runs", type=int, default=1, help="real GRPO runs per start (default 1; with 2 or more the "
                   "actual changes get error bars and the verdict can resolve pairs of starts)")
    g.add_argument("--rl-eval-samples", type=int, default=4,
                   help="completions per held-out puzzle at each accuracy measurement (default 4)")
    g.add_argument("--rl-target-samples", type=int, default=4,
                   help="completions per held-out puzzle for the predicted accuracy gradient (default 4)")
    add_common_args(p)
    p.set_defaults(func=cmd_demo)


def config_from_args(args: argparse.Namespace) -> DemoConfig:
    """The DemoConfig of `demo`'s flags (not yet validated: `run_demo` does that first)."""
    return DemoConfig(
        out=Path(args.out), model=args.model, n_pool=args.n_pool, n_target=args.n_target, n_test=args.n_test,
        top_k=args.top_k, epochs=args.epochs, random_draws=args.random_draws, lr=args.lr,
        max_new_tokens=args.max_new_tokens, seed=args.seed, rl_starts=rl_starts(args.rl_starts),
        rl_start_data=rl_start_files(args.rl_start_data or []), start_examples=args.start_examples,
        start_steps=args.start_steps, rl_prompts=args.rl_prompts, rl_eval=args.rl_eval, rl_steps=args.rl_steps,
        rl_lr=args.rl_lr, group_size=args.group_size, rl_prompts_per_step=args.rl_prompts_per_step,
        rl_max_new_tokens=args.rl_max_new_tokens, rl_runs=args.rl_runs, rl_eval_samples=args.rl_eval_samples,
        rl_target_samples=args.rl_target_samples, progress=not args.quiet,
    )


def rl_starts(text: str) -> list[str]:
    """The response styles named by --rl-starts, in order, without blanks or repeats."""
    return list(dict.fromkeys(x.strip() for x in text.split(",") if x.strip()))


def rl_start_files(items: list[str]) -> dict[str, Path]:
    """The starts named by --rl-start-data, {NAME: FILE} in order; SampleEffectError on an entry that is not
    NAME=FILE or a NAME given twice (`DemoConfig.validate` checks the names themselves)."""
    files: dict[str, Path] = {}
    for item in items:
        name, sep, path = item.partition("=")
        name = name.strip()
        if not sep or not name or not path:
            raise SampleEffectError(f"--rl-start-data takes NAME=FILE, got {item!r}")
        if name in files:
            raise SampleEffectError(f"--rl-start-data name {name!r} is used twice (--rl-starts and --rl-start-data share names)")
        files[name] = Path(path)
    return files


def cmd_demo(args: argparse.Namespace) -> None:
    """`sample-effect demo`: run the demo recipe with the parsed flags."""
    from sample_effect.recipes.kk_demo import run_demo

    run_demo(config_from_args(args))
