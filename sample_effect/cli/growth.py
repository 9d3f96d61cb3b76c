"""`predict-sft`, `validate curves` and `validate selection`: predicted SFT growth and its checks against real runs."""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from sample_effect.cli.options import (
    OPTIMIZERS,
    SubParsers,
    add_common_args,
    add_data_format_args,
    add_model_args,
    add_sft_schedule_args,
    add_target_args,
    check_json_outputs,
    data_format_from_args,
    load_model_from_args,
    optimizer_names,
    sft_config_from_args,
    target_examples_from_args,
    target_from_args,
)
from sample_effect.errors import SampleEffectError


def _dataset_arg(text: str) -> tuple[str, str]:
    """'NAME=FILE' or 'FILE' (named after the file's stem)."""
    if "=" in text:
        name, path = text.split("=", 1)
        if not name or not path:
            raise argparse.ArgumentTypeError(f"expected NAME=FILE or FILE, got '{text}'")
        return name, path
    return Path(text).stem, text


def _growth_args(p: argparse.ArgumentParser, several: bool = True, direction: bool = True) -> None:
    """--model, --data (one or several), the target (--target-data, and --direction where the command takes it), the schedule."""
    add_model_args(p, lora=False)
    if several:
        p.add_argument("--data", required=True, action="append", type=_dataset_arg, metavar="[NAME=]FILE",
                       help="an SFT JSONL dataset; repeat to compare several side by side")
    else:
        p.add_argument("--data", required=True, help="SFT JSONL pool to select from")
    add_target_args(p, ("data", "direction") if several and direction else ("data",), exclusive=True, normalize=False,
                    helps={"data": "target: the mean loss over this SFT JSONL (it should fall)",
                           "direction": "target: <theta, FINAL - BASE> (should rise)"})
    add_sft_schedule_args(p)
    p.add_argument("--max-length", type=int, default=None, help="truncate sequences to this many tokens (default: no truncation)")
    p.add_argument("--memory-budget", default="4GB", help="memory budget for gradient chunks (default 4GB)")


def add_parsers(sub: SubParsers) -> None:
    """Register `predict-sft`."""
    p = sub.add_parser(
        "predict-sft", help="predict the target's curve over an SFT schedule (positive + noise effect), per dataset",
        description="Replay the SFT trainer's schedule (batch order, accumulation, clipping, lr schedule, AdamW state) "
        "on per-example gradients taken at the starting weights, and report the predicted change of the target per "
        "step: positive effect (full-data mean step) and noise effect (Monte Carlo over batch orders for AdamW, "
        "Hessian trace for SGD). Several --data compare side by side. Like train-sft, it clips the batch gradient at "
        "--max-grad-norm 1.0 by default; --max-grad-norm 0 turns clipping off.",
    )
    _growth_args(p)
    p.add_argument("--optimizer", default="adamw", choices=OPTIMIZERS,
                   help=f"simulated optimiser: {optimizer_names()} (default adamw, the trainer's)")
    p.add_argument("--replicates", type=int, default=8, help="Monte Carlo batch orders for the AdamW noise effect (default 8)")
    p.add_argument("--out", required=True, help="output JSON (summary per dataset); curves go to OUT.csv, figure to OUT.png")
    add_common_args(p)
    add_data_format_args(p)
    p.set_defaults(func=cmd_predict_sft)


def _load_common(args: argparse.Namespace) -> tuple[Any, Any, Any]:
    from sample_effect.engine.core import ComputeConfig, parse_bytes

    cfg = sft_config_from_args(args)
    try:
        budget = parse_bytes(args.memory_budget)
    except SampleEffectError as exc:
        raise SampleEffectError(f"--memory-budget: {exc}") from None
    compute = ComputeConfig(batch_size=16, memory_budget=budget, progress=not args.quiet)
    return cfg, compute, load_model_from_args


def _predict(args: argparse.Namespace, model: Any, tok: Any, cfg: Any, compute: Any) -> tuple[list, Any, Any, list]:
    """Curves for every --data: (curves, target vector, target examples or None, tokenized datasets)."""
    from sample_effect.data.examples import load_examples, tokenize_examples
    from sample_effect.growth.sft import predict_sft_curve, sft_update
    from sample_effect.models.loading import select_parameters
    from sample_effect.targets.core import resolve_target

    fmt = data_format_from_args(args)
    datasets = [(name, load_examples(path, data_format=fmt)) for name, path in args.data]
    names = [n for n, _ in datasets]
    if len(set(names)) != len(names):
        raise SampleEffectError(f"two --data share the name '{next(n for n in names if names.count(n) > 1)}'; use NAME=FILE")
    params = select_parameters(model)
    target = target_from_args(args, tok, target_examples_from_args(args), accuracy_prefix=None)
    target_ex = target.hessian_examples()
    tokenized = [(n, tokenize_examples(exs, tok, args.max_length)[0]) for n, exs in datasets]
    from sample_effect.runtime import distributed as dist

    if dist.is_distributed():  # torchrun: the target and the per-example gradients are split across ranks
        from sample_effect.targets.core import resolve_target_distributed

        dist.init(next(iter(params.values())).device)
        g = resolve_target_distributed(target, model, params, tokenized[0][1], compute)
    else:
        g = resolve_target(target, model, params, tokenized[0][1], compute)
    curves = [
        predict_sft_curve(model, params, exs, g, cfg, name, getattr(args, "replicates", 8),
                          sft_update(cfg, getattr(args, "optimizer", "adamw")), target_ex, compute)
        for name, exs in tokenized
    ]
    return curves, g, target_ex, tokenized


def cmd_predict_sft(args: argparse.Namespace) -> None:
    """Predict, write JSON + CSV + PNG."""
    from sample_effect.growth.sft import curves_table, predict_sft_report
    from sample_effect.io import atomic_open, write_table
    from sample_effect.plots.figures import predicted_curves

    if args.replicates < 1:
        raise SampleEffectError(f"--replicates must be >= 1, got {args.replicates}")
    out, csv, png = check_json_outputs(args.out, args.overwrite, (".csv", ".png"))
    cfg, compute, load = _load_common(args)
    t0 = time.perf_counter()
    model, tok = load(args)
    curves, g, _, _ = _predict(args, model, tok, cfg, compute)
    from sample_effect.runtime import distributed as dist

    if dist.is_distributed() and dist.rank() != 0:
        return  # rank 0 alone reports and writes
    report = predict_sft_report(curves, cfg, g.kind, args.optimizer, args.replicates)
    write_table(curves_table(curves), csv)
    predicted_curves(curves, png)
    with atomic_open(out) as f:
        json.dump(report, f, indent=2)
    for c in report["datasets"]:
        print(f"{c['name']}: dataset effect {c['dataset_effect']:.4g}; predicted change over {c['steps']} steps "
              f"{c['predicted_total_change']:.4g} (positive {c['positive_total']:.4g}, noise {c['noise_total']:.4g})")
    print(f"predicted {len(curves)} dataset(s) in {time.perf_counter() - t0:.1f}s; wrote {out}, {csv}, {png}")


def add_validate_parsers(checks: SubParsers) -> None:
    """Register `validate curves` and `validate selection`."""
    _add_validate_curves(checks)
    _add_validate_selection(checks)


def _add_validate_curves(checks: SubParsers) -> None:
    """Register `validate curves`."""
    p = checks.add_parser(
        "curves", help="predicted vs actual target curves over real SFT runs, per dataset",
        description="For every --data: predict the curve (as predict-sft), then run the real SFT trainer with the same "
        "schedule from the same weights and evaluate the target every --eval-every steps. Reports per-dataset "
        "predicted and actual changes and their rank agreement across datasets; JSON, CSV, PNG.",
    )
    _growth_args(p, direction=False)  # the actual target is the eval loss of the real runs: a loss target only
    p.add_argument("--replicates", type=int, default=8, help="Monte Carlo batch orders (default 8)")
    p.add_argument("--eval-every", type=int, default=0, help="evaluate the target every k steps (default: about 10 points)")
    p.add_argument("--out", required=True, help="output JSON; curves to OUT.csv, figure to OUT.png")
    add_common_args(p)
    add_data_format_args(p)
    p.set_defaults(func=cmd_validate_curves, optimizer="adamw")


def cmd_validate_curves(args: argparse.Namespace) -> None:
    """Predict, train, compare."""
    from sample_effect.growth.sft import total_steps
    from sample_effect.io import atomic_open, write_table
    from sample_effect.plots.figures import predicted_vs_actual
    from sample_effect.training import train_sft
    from sample_effect.validation.linearization import rank_agreement

    if not args.target_data:
        raise SampleEffectError("validate curves needs --target-data (the actual target is the eval loss of the real runs)")
    out, csv, png = check_json_outputs(args.out, args.overwrite, (".csv", ".png"))
    cfg, compute, load = _load_common(args)
    model, tok = load(args)
    curves, _, target_ex, tokenized = _predict(args, model, tok, cfg, compute)
    rows, summary = [], []
    for curve, (name, exs) in zip(curves, tokenized):
        steps = total_steps(cfg, len(exs))
        every = args.eval_every or max(1, steps // 10)
        run_cfg = cfg.__class__(**{**cfg.__dict__, "eval_every": every})
        fresh, _ = load(args)
        metrics = train_sft(fresh, tok, exs, run_cfg, eval_examples=target_ex, progress=not args.quiet)
        pred = curve.steps.set_index("step")
        for _, m in metrics.iterrows():
            s = int(m["step"])
            predicted = curve.start_value if s == 0 else float(pred.loc[s, "target"])
            seed_path = curve.start_value if s == 0 else curve.start_value - float(pred.loc[:s, "seed_path"].sum())
            rows.append({"dataset": name, "step": s, "actual": float(m["eval_loss"]), "predicted": predicted,
                         "predicted_seed_path": seed_path})
        actual_change = float(metrics["eval_loss"].iloc[0] - metrics["eval_loss"].iloc[-1])
        summary.append({**curve.summary(), "actual_total_change": actual_change,
                        "actual_final_value": float(metrics["eval_loss"].iloc[-1])})
    import pandas as pd

    df = pd.DataFrame(rows)
    agreement = rank_agreement([s["predicted_total_change"] for s in summary],
                               [s["actual_total_change"] for s in summary], "n_datasets")
    write_table(df, csv)
    predicted_vs_actual(df, png)
    with atomic_open(out) as f:
        json.dump({"datasets": summary, "agreement": agreement, "config": asdict(cfg)}, f, indent=2)
    for s in summary:
        print(f"{s['name']}: predicted change {s['predicted_total_change']:.4g}, actual {s['actual_total_change']:.4g}")
    print(f"rank agreement: {agreement}; wrote {out}, {csv}, {png}")


def _add_validate_selection(checks: SubParsers) -> None:
    """Register `validate selection`."""
    p = checks.add_parser(
        "selection", help="train on top-k by e(s) vs random-k (several seeds) vs bottom-k",
        description="Rank --data by sample effect toward --target-data (simulating the trainer's AdamW step with its "
        "clipping), then fine-tune from the same weights on the top-k, bottom-k and --random-seeds random k-subsets; "
        "report the held-out target loss (and greedy accuracy with --accuracy) with its spread; JSON, CSV, PNG.",
    )
    _growth_args(p, several=False)
    p.add_argument("--k", type=int, required=True, help="examples per selection")
    p.add_argument("--random-seeds", type=int, default=3, help="random selections (default 3)")
    p.add_argument("--accuracy", action="store_true", help="also greedy accuracy on target lines with an 'answer'")
    p.add_argument("--reward", default="kk", help="reward for --accuracy (default kk)")
    p.add_argument("--eval-max-new-tokens", type=int, default=256, help="greedy generation limit for --accuracy")
    p.add_argument("--out", required=True, help="output JSON; runs to OUT.csv, figure to OUT.png")
    add_common_args(p)
    add_data_format_args(p)
    p.set_defaults(func=cmd_validate_selection)


def cmd_validate_selection(args: argparse.Namespace) -> None:
    """Rank, select, train, compare."""
    from sample_effect.data.examples import load_examples, tokenize_examples
    from sample_effect.io import atomic_open, write_table
    from sample_effect.plots.figures import selection_bars
    from sample_effect.rollouts.rewards import get_reward
    from sample_effect.scoring.effects import score_examples_result
    from sample_effect.targets.core import LossTarget
    from sample_effect.validation.selection import selection_runs, selection_sets, selection_summary

    if args.k < 1 or args.random_seeds < 0:
        raise SampleEffectError("--k must be >= 1 and --random-seeds >= 0")
    out, csv, png = check_json_outputs(args.out, args.overwrite, (".csv", ".png"))
    cfg, compute, load = _load_common(args)
    reward = get_reward(args.reward) if args.accuracy else None
    fmt = data_format_from_args(args)
    raw, target_raw = load_examples(args.data, data_format=fmt), load_examples(args.target_data, data_format=fmt)
    if args.k > len(raw):
        raise SampleEffectError(f"--k {args.k} is larger than the pool ({len(raw)} examples in {args.data})")
    model, tok = load(args)
    pool = tokenize_examples(raw, tok, args.max_length)[0]
    target_ex = tokenize_examples(target_raw, tok, args.max_length)[0]
    prompts = None
    if args.accuracy:
        prompts = [(e.prompt, str(e.records[0]["answer"])) for e in target_raw if e.prompt is not None and "answer" in e.records[0]]
        if not prompts:
            raise SampleEffectError(f"--accuracy needs lines with a prompt and an 'answer' in {args.target_data}")
    update = cfg.update
    table = score_examples_result(model, tok, pool, LossTarget(target_ex), update, compute=compute).table()
    run_cfg = cfg.__class__(**{**cfg.__dict__, "eval_max_new_tokens": args.eval_max_new_tokens})
    selections = selection_sets(table, args.k, args.random_seeds, seed=args.seed)
    runs = selection_runs(lambda: load(args), tok, pool, selections, run_cfg, target_ex, prompts, reward, not args.quiet)
    summary = selection_summary(runs, selections, table)
    groups = summary.groupby("group", sort=False).agg(
        target_loss_end_mean=("target_loss_end", "mean"), target_loss_end_std=("target_loss_end", "std"),
        mean_effect=("mean_effect", "mean"), runs=("selection", "count"),
    )
    if "accuracy_end" in summary:
        groups["accuracy_end_mean"] = summary.groupby("group", sort=False)["accuracy_end"].mean()
        groups["accuracy_end_std"] = summary.groupby("group", sort=False)["accuracy_end"].std()
    write_table(summary, csv)
    selection_bars(summary, png)
    doc = {"k": args.k, "groups": json.loads(groups.reset_index().to_json(orient="records")),
           "runs": json.loads(summary.to_json(orient="records")), "config": asdict(run_cfg)}
    with atomic_open(out) as f:
        json.dump(doc, f, indent=2)
    print(groups.to_string(float_format=lambda v: f"{v:.4g}"))
    print(f"wrote {out}, {csv}, {png}")
