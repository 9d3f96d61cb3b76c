"""`sample-effect validate rl-curves`: predicted vs actual target curves over real GRPO runs, per checkpoint."""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict

from sample_effect.cli.options import (
    SubParsers,
    add_chat_template_arg,
    add_common_args,
    add_device_arg,
    add_grpo_schedule_args,
    add_target_args,
    check_json_outputs,
    grpo_config_from_args,
    target_examples_from_args,
)
from sample_effect.errors import SampleEffectError


def add_validate_parsers(checks: SubParsers) -> None:
    """Register `validate rl-curves`."""
    p = checks.add_parser(
        "rl-curves", help="predicted vs actual target curves over real GRPO runs, per starting checkpoint",
        description="For every --model: predict the growth of T = -(mean loss over --target-data) per GRPO step "
        "(as predict-rl, with the trainer's AdamW and clipping), then run the real GRPO trainer from the same weights "
        "(--runs seeds) and evaluate the target loss every --eval-every steps. Reports per-checkpoint predicted and "
        "actual changes and their rank agreement; JSON, CSV, PNG.",
    )
    p.add_argument("--model", action="append", required=True, metavar="DIR",
                   help="starting checkpoint (or 'tiny'); repeat to compare initialisations")
    p.add_argument("--prompts", required=True, help='RL JSONL: {"id", "prompt", "answer"}')
    add_chat_template_arg(p)
    p.add_argument("--reward", default="kk", help="kk, kk-partial, exact, boxed or module:function (default kk)")
    add_target_args(p, helps={"data": "target: the mean loss over this SFT JSONL"})
    add_grpo_schedule_args(p)
    p.add_argument("--eval-every", type=int, default=1, help="evaluate the target loss every k steps (default 1)")
    p.add_argument("--runs", type=int, default=1, help="real GRPO runs per checkpoint, seeds --seed, --seed+1, ... (default 1)")
    p.add_argument("--seed", type=int, default=0, help="first trainer seed (default 0)")
    p.add_argument("--predict-seed", type=int, default=1000, help="rollout seed of the prediction (default 1000)")
    p.add_argument("--noise-draws", type=int, default=256, help="batch draws for the noise term (default 256)")
    p.add_argument("--dtype", default="float32", help="float32 (default), float64 or bfloat16")
    add_device_arg(p)
    p.add_argument("--max-length", type=int, default=None, help="truncate target sequences to this many tokens (default: no truncation)")
    p.add_argument("--out", required=True, help="output JSON; curves to OUT.csv, figure to OUT.png")
    add_common_args(p)
    p.set_defaults(func=cmd_validate_rl_curves)


def cmd_validate_rl_curves(args: argparse.Namespace) -> None:
    """Predict, train, compare; write JSON + CSV + PNG."""
    import pandas as pd

    from sample_effect.data.examples import tokenize_examples
    from sample_effect.engine.core import ComputeConfig
    from sample_effect.io import atomic_open, write_table
    from sample_effect.models.loading import load_model
    from sample_effect.models.registry import resolve_model
    from sample_effect.plots.figures import predicted_vs_actual
    from sample_effect.rollouts.prompts import chat_template_prompts, load_rl_prompts
    from sample_effect.rollouts.rewards import get_reward
    from sample_effect.validation.rl_curves import agreement, rl_curve

    for flag, value in (("--runs", args.runs), ("--eval-every", args.eval_every), ("--noise-draws", args.noise_draws)):
        if value < 1:
            raise SampleEffectError(f"{flag} must be >= 1, got {value}")
    if len(set(args.model)) != len(args.model):
        raise SampleEffectError("the same --model is given twice")
    out, csv, png = check_json_outputs(args.out, args.overwrite, (".csv", ".png"))
    cfg = grpo_config_from_args(args)
    reward = get_reward(args.reward)
    prompts = load_rl_prompts(args.prompts)
    if not prompts:
        raise SampleEffectError(f"{args.prompts} holds no prompts")
    target_raw = target_examples_from_args(args)
    compute = ComputeConfig(progress=not args.quiet)
    t0 = time.perf_counter()
    frames, summaries = [], []
    for spec in args.model:
        path = resolve_model(spec)

        first = [load_model(path, args.dtype, args.device)]  # tokenizes the target, then serves the prediction
        target_ex = tokenize_examples(target_raw, first[0][1], args.max_length)[0]

        def load(path=path, first=first):  # type: ignore[no-untyped-def]
            return first.pop() if first else load_model(path, args.dtype, args.device)

        wrapped = chat_template_prompts(prompts, first[0][1], args.chat_template)
        df, summary = rl_curve(str(spec), load, wrapped, reward, target_ex, cfg, args.runs, args.predict_seed,
                               args.noise_draws, compute)
        frames.append(df)
        summaries.append(summary)
        print(f"{spec}: predicted growth {summary['predicted_growth_per_step']:.4g}/step "
              f"(95% CI [{summary['predicted_growth_ci95'][0]:.4g}, {summary['predicted_growth_ci95'][1]:.4g}]), "
              f"with second order {summary['predicted_growth_second_order'] or float('nan'):.4g}/step, "
              f"actual {summary['actual_growth_per_step']:.4g}/step; total change predicted "
              f"{summary['predicted_total_change']:.4g}, actual {summary['actual_total_change']:.4g}")
    rows = pd.concat(frames, ignore_index=True)
    cols = [c for c in ("actual", "predicted", "predicted_second_order") if rows[c].notna().any()]
    mean = rows.groupby(["model", "step"], sort=False)[cols].mean().reset_index()
    write_table(rows, csv)
    predicted_vs_actual(mean.rename(columns={"model": "dataset"}), png, title="Predicted vs actual target loss during GRPO")
    agree = agreement(summaries)
    with atomic_open(out) as f:
        json.dump({"models": summaries, "agreement": agree, "config": asdict(cfg)}, f, indent=2, default=str)
    print(f"rank agreement: {agree}; {time.perf_counter() - t0:.1f}s; wrote {out}, {csv}, {png}")
