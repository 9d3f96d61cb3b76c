"""`sample-effect demo`: the main job end to end on built-in data, offline, in a few minutes on CPU.

1. Generate Knights-and-Knaves puzzles: an SFT pool in three response styles (answer-only,
   short-cot, long-cot), held-out target puzzles and held-out test puzzles.
2. Rank the pool by sample effect toward the held-out target (minus the gradient of the loss
   of the correct boxed answers), simulating one AdamW step with clipping per example.
3. Fine-tune the base model briefly on the top-k examples and on random k (two seeds), and
   measure held-out target loss and greedy test accuracy.
4. Write effects.csv, top_k.jsonl, figures (PNG) and report.md.

The default model is the tiny Qwen2-style base model shipped in the package (built by
scripts/build_tiny_base.py); `--model PATH|smollm2` uses another.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

from sample_effect.cli.options import SubParsers, add_common_args
from sample_effect.errors import SampleEffectError

START_STEPS = 240  # SFT steps of an RL start (tests/models/test_sft_band.py measures this recipe)


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


def kk_records(n: int, seed: int, styles: list[str], prefix: str) -> list[dict]:
    """n puzzles (half 2-person, half 3-person) in each style; ids name the style."""
    from sample_effect.data.kk import generate_puzzles, puzzle_record

    recs = []
    for people, count in ((2, n // 2), (3, n - n // 2)):
        for p in generate_puzzles(people, count, seed=seed) if count else []:
            for style in styles:
                recs.append(puzzle_record(p, style, seed=seed, id_prefix=f"{prefix}-{style}"))
    return recs


def _check_args(args: argparse.Namespace) -> tuple[Path, dict[str, tuple[Path, list]]]:
    """Settings and --out checked before anything is loaded or written; (--out, {NAME: (FILE, its examples)}
    of --rl-start-data), the files read here once, so a bad one fails before the model loads."""
    for flag, value in (("--n-pool", args.n_pool), ("--n-target", args.n_target), ("--n-test", args.n_test),
                        ("--top-k", args.top_k), ("--max-new-tokens", args.max_new_tokens), ("--random-draws", args.random_draws),
                        ("--start-examples", args.start_examples), ("--start-steps", args.start_steps),
                        ("--rl-prompts", args.rl_prompts),
                        ("--rl-eval", args.rl_eval), ("--rl-steps", args.rl_steps),
                        ("--rl-prompts-per-step", args.rl_prompts_per_step),
                        ("--rl-max-new-tokens", args.rl_max_new_tokens)):
        if value < 1:
            raise SampleEffectError(f"{flag} must be >= 1, got {value}")
    for flag, x in (("--epochs", args.epochs), ("--lr", args.lr), ("--rl-lr", args.rl_lr)):
        if not (math.isfinite(x) and x > 0):
            raise SampleEffectError(f"{flag} must be a positive number, got {x}")
    if args.group_size < 2:
        raise SampleEffectError(f"--group-size must be >= 2 (GRPO advantages need a group), got {args.group_size}")
    if args.rl_prompts_per_step > args.rl_prompts:
        raise SampleEffectError(f"--rl-prompts-per-step ({args.rl_prompts_per_step}) exceeds --rl-prompts ({args.rl_prompts})")
    from sample_effect.data.kk import STYLES

    bad = [s for s in rl_starts(args) if s not in STYLES]
    if bad:
        raise SampleEffectError(f"unknown --rl-starts style {bad[0]!r}; choose from {', '.join(STYLES)}")
    start_data = {name: (path, _read_start_file(path)) for name, path in rl_start_files(args).items()}
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise SampleEffectError(f"--out must be a directory, but {out} is a file")
    return out, start_data


def sft_recipe(lr: float = 2e-4, steps: int = 120, seed: int = 0, max_new_tokens: int = 320) -> Any:
    """The demo's SFT: AdamW, batch 4, clip 1.0, constant lr, the target loss evaluated 4 times.

    The defaults are the demo's (20 epochs over 24 examples); both the selections and the RL
    starts are fine-tuned with it.
    """
    from sample_effect.training import SFTConfig

    return SFTConfig(lr=lr, batch_size=4, max_steps=steps, max_grad_norm=1.0, eval_every=max(1, steps // 4),
                     seed=seed, eval_max_new_tokens=max_new_tokens)


def rl_starts(args: argparse.Namespace) -> list[str]:
    """The response styles named by --rl-starts, in order, without blanks or repeats."""
    return list(dict.fromkeys(x.strip() for x in args.rl_starts.split(",") if x.strip()))


def rl_start_files(args: argparse.Namespace) -> dict[str, Path]:
    """The starts named by --rl-start-data, {NAME: FILE} in order; SampleEffectError on a malformed or clashing entry.

    NAME becomes a directory (checkpoints/start-NAME) and the start's label sft-NAME, so it is
    limited to letters, digits, '.', '_' and '-', and may not repeat or be one of --rl-starts.
    """
    files: dict[str, Path] = {}
    taken = set(rl_starts(args))
    for item in args.rl_start_data or []:
        name, sep, path = item.partition("=")
        name = name.strip()
        if not sep or not name or not path:
            raise SampleEffectError(f"--rl-start-data takes NAME=FILE, got {item!r}")
        if not all(c.isalnum() or c in "._-" for c in name) or name.startswith("."):
            raise SampleEffectError(f"--rl-start-data name {name!r} must be letters, digits, '.', '_' or '-'")
        if name in files or name in taken:
            raise SampleEffectError(f"--rl-start-data name {name!r} is used twice (--rl-starts and --rl-start-data share names)")
        files[name] = Path(path)
    return files


def _read_start_file(path: Path) -> list:
    """The examples of one --rl-start-data FILE (SampleEffectError if missing, malformed or empty)."""
    from sample_effect.data.examples import load_examples

    if not path.exists():
        raise SampleEffectError(f"--rl-start-data file not found: {path}")
    return load_examples(path)  # raises on an empty file too


def _slug(label: str) -> str:
    """A directory name for a selection label ('random-24 (seed 0)' -> 'random-24-seed-0')."""
    return "-".join("".join(c if c.isalnum() else " " for c in label).split())


def _write_data(args: argparse.Namespace, out: Path) -> tuple[list[dict], list[dict], list[dict]]:
    """Generate the pool, target and test puzzles and write them as JSONL into --out."""
    from sample_effect.data.kk import STYLES
    from sample_effect.io import atomic_open

    # Seeds 10_000+ keep the demo's puzzles apart from the base model's pre-training corpus (seed 100).
    base_seed = 10_000 + 3 * args.seed
    pool = kk_records(args.n_pool, base_seed, list(STYLES), "pool")
    target = kk_records(args.n_target, base_seed + 1, ["answer-only"], "target")
    test = kk_records(args.n_test, base_seed + 2, ["answer-only"], "test")
    for name, recs in (("pool.jsonl", pool), ("target.jsonl", target), ("test.jsonl", test)):
        with atomic_open(out / name) as f:
            f.writelines(json.dumps(r) + "\n" for r in recs)
    return pool, target, test


def _rank_pool(args: argparse.Namespace, out: Path, model: Any, tok: Any, tok_pool: list, tok_target: list,
               examples: list) -> tuple[Any, Any, int]:
    """Score the pool toward the target (one AdamW step, clip 1.0); write effects.csv, top_k.jsonl, the figure."""
    from sample_effect.data.examples import export_examples
    from sample_effect.engine.core import ComputeConfig
    from sample_effect.io import write_table
    from sample_effect.plots.figures import effects_by_group
    from sample_effect.scoring.effects import score_examples_result
    from sample_effect.targets.core import LossTarget
    from sample_effect.update.optim import UpdateConfig

    update = UpdateConfig("adamw", lr=args.lr, clip=1.0, weight_decay=0.0)
    result = score_examples_result(model, tok, tok_pool, LossTarget(tok_target), update,
                                   compute=ComputeConfig(batch_size=8, progress=not args.quiet))
    table = result.table()
    table["style"] = table["id"].str.extract(r"^pool-(answer-only|short-cot|long-cot)-")[0]
    write_table(table, out / "effects.csv")
    k = min(args.top_k, len(table))
    by_id = {ex.id: ex for ex in examples}
    export_examples([by_id[i] for i in table["id"].head(k)], out / "top_k.jsonl")
    effects_by_group(table, "style", out / "effects_by_style.png", "Sample effect of K&K SFT examples by response style")
    return result, table, k


def _train_selections(args: argparse.Namespace, model_dir: Any, base: Any, tok: Any, tok_pool: list, tok_target: list,
                      test_items: list, selections: dict[str, list[str]], cfg: Any, say: Any) -> dict[str, Any]:
    """Fine-tune a fresh copy of the base model on each selection; target loss every eval, greedy accuracy at the start and end.

    `base` is the already loaded base model (only evaluated here, never trained).

    Greedy accuracy is the slow measurement, so it is taken twice per run (the base model's once,
    shared by every run) rather than at every evaluation; the checkpoint of each run is kept.
    """
    import torch

    from sample_effect.models.loading import load_model
    from sample_effect.rollouts.generation import greedy_accuracy
    from sample_effect.rollouts.rewards import get_reward
    from sample_effect.training import train_sft

    index = {ex.id: i for i, ex in enumerate(tok_pool)}
    reward = get_reward("kk")
    say(f"greedy accuracy of the base model on {len(test_items)} test puzzles")
    start_acc, _ = greedy_accuracy(base.eval(), tok, test_items, reward, args.max_new_tokens)
    runs = {}
    for n, (label, ids) in enumerate(selections.items(), 1):
        fresh, _ = load_model(model_dir, "float32")
        torch.manual_seed(args.seed)
        say(f"[{n}/{len(selections)}] fine-tuning on {label}")
        df = train_sft(fresh, tok, [tok_pool[index[i]] for i in ids], cfg, eval_examples=tok_target,
                       progress=not args.quiet, out_dir=Path(args.out) / "checkpoints" / f"sft-{_slug(label)}")
        end_acc, _ = greedy_accuracy(fresh.eval(), tok, test_items, reward, args.max_new_tokens)
        df["eval_accuracy"] = float("nan")
        df.loc[df.index[0], "eval_accuracy"], df.loc[df.index[-1], "eval_accuracy"] = start_acc, end_acc
        runs[label] = df
        say(f"{label}: target loss {df['eval_loss'].iloc[-1]:.3f}, test accuracy {end_acc:.3f}")
    return runs


def _summary(out: Path, model: Any, tok_pool: list, result: Any, table: Any, selections: dict[str, list[str]],
             runs: dict[str, Any], cfg: Any, k: int, progress: bool = False) -> Any:
    """Predict each selection's curve (predict-sft) against its real run; write the figures and selection.csv."""
    import pandas as pd

    from sample_effect.engine.core import ComputeConfig
    from sample_effect.growth.sft import predict_sft_curve
    from sample_effect.io import write_table
    from sample_effect.models.loading import select_parameters
    from sample_effect.plots.figures import curves, predicted_vs_actual_bars

    index = {ex.id: i for i, ex in enumerate(tok_pool)}
    predicted = {
        label: predict_sft_curve(model, select_parameters(model), [tok_pool[index[i]] for i in ids], result.target,
                                 cfg, label, replicates=4, compute=ComputeConfig(batch_size=8, progress=False),
                                 progress=progress)
        for label, ids in selections.items()
    }
    curves(runs, "step", "eval_loss", out / "selection_loss.png", f"Held-out target loss while fine-tuning on {k} examples",
           "held-out answer loss (nats/token)")
    curves({lab: df.dropna(subset=["eval_accuracy"]) for lab, df in runs.items()}, "step", "eval_accuracy",
           out / "selection_accuracy.png", "Greedy test accuracy (K&K reward), before and after fine-tuning", "accuracy")
    summary = pd.DataFrame(
        [{"selection": lab, "group": lab.split("-")[0], "target_loss_start": df["eval_loss"].iloc[0], "target_loss_end": df["eval_loss"].iloc[-1],
          "accuracy_start": df["eval_accuracy"].iloc[0], "accuracy_end": df["eval_accuracy"].iloc[-1],
          "mean_effect": float(table.set_index("id").loc[selections[lab], "effect"].mean()),
          "predicted_drop": float(predicted[lab].steps["cumulative"].iloc[-1]),
          "predicted_drop_step1": float(predicted[lab].steps["seed_path"].iloc[0]),
          "actual_drop": float(df["eval_loss"].iloc[0] - df["eval_loss"].iloc[-1])} for lab, df in runs.items()]
    )
    write_table(summary, out / "selection.csv")
    predicted_vs_actual_bars(summary, out / "predicted_vs_actual.png")
    return summary


def _rl_prompts(args: argparse.Namespace, out: Path) -> tuple[list, list]:
    """Fresh GRPO training and held-out puzzles (2-3 people), as RL prompts in the SFT prompt format.

    Written to --out as rl_prompts.jsonl and rl_eval.jsonl, so `train-grpo` or `predict-rl` can go
    on from the demo's checkpoints with the same puzzles.
    """
    from sample_effect.io import atomic_open
    from sample_effect.training.grpo import RLPrompt

    base_seed = 10_000 + 3 * args.seed + 1_000
    train = kk_records(args.rl_prompts, base_seed, ["answer-only"], "rl")
    held = kk_records(args.rl_eval, base_seed + 1, ["answer-only"], "rl-eval")
    for name, recs in (("rl_prompts.jsonl", train), ("rl_eval.jsonl", held)):
        with atomic_open(out / name) as f:
            f.writelines(json.dumps({k: r[k] for k in ("id", "prompt", "answer")}) + "\n" for r in recs)
    return [[RLPrompt(r["id"], r["prompt"], r["answer"]) for r in recs] for recs in (train, held)]


def _tokenized(recs: list[dict], name: str, tok: Any) -> list:
    """Records as tokenized examples; `name` is the file their errors point to."""
    from sample_effect.data.examples import examples_from_records, tokenize_examples

    return tokenize_examples(examples_from_records(list(enumerate(recs, 1)), name), tok)[0]


def start_examples(n: int, seed: int, style: str, tok: Any) -> list:
    """The SFT data of one RL start: n fresh puzzles (2-3 people, none from the pool) in `style`, tokenized.

    An RL start is fine-tuned on more examples, and for longer, than a selection (160 examples and
    240 steps against 24 and 120 by default). At seeds 7-10, 120 answer-only steps gave a mean
    greedy 2-person accuracy of 0.31 with 40 examples and 0.47 with these 160, and 3-person 0.094.
    240 steps on the 160 gave 0.51 and 0.19 (see tests/models/test_sft_band.py).
    """
    return _tokenized(kk_records(n, start_puzzle_seed(seed), [style], "start"), f"start-{style}.jsonl", tok)


def start_puzzle_seed(seed: int) -> int:
    """The puzzle seed of `demo --seed SEED`'s RL-start data (`kk_records` draws half 2-, half 3-person puzzles)."""
    return 10_000 + 3 * seed + 2_000


def _rl_stage(args: argparse.Namespace, out: Path, model_dir: Any, tok: Any, say: Any,
              start_data: dict[str, tuple[Path, list]]) -> dict[str, Any] | None:
    """Part 4: SFT one start per --rl-starts style and --rl-start-data file, predict its RL growth, run real GRPO,
    compare the orderings."""
    from sample_effect.data.examples import tokenize_examples
    from sample_effect.engine.core import ComputeConfig
    from sample_effect.io import atomic_open, write_table
    from sample_effect.models.loading import load_model
    from sample_effect.plots.rl import rl_start_curves
    from sample_effect.training import train_sft
    from sample_effect.training.grpo import GRPOConfig
    from sample_effect.validation.rl_accuracy import AccuracyCurveConfig
    from sample_effect.validation.rl_starts import compare_rl_starts, ordering_verdict, verdict_text

    datasets = {style: (lambda s=style: start_examples(args.start_examples, args.seed, s, tok)) for style in rl_starts(args)}
    for name, (_, examples) in start_data.items():
        datasets[name] = lambda e=examples: tokenize_examples(e, tok)[0]
    if not datasets:
        return None
    import torch

    ckpt = out / "checkpoints"
    cfg = sft_recipe(args.lr, args.start_steps, args.seed, args.max_new_tokens)
    loaders, sizes = {}, {}
    for name, make in datasets.items():
        data = make()
        sizes[f"sft-{name}"] = len(data)
        say(f"SFT start '{name}': {len(data)} examples, {cfg.max_steps} steps -> {ckpt / f'start-{name}'}")
        fresh, _ = load_model(model_dir, "float32")
        torch.manual_seed(args.seed)
        train_sft(fresh, tok, data, cfg, out_dir=ckpt / f"start-{name}", progress=not args.quiet)
        loaders[f"sft-{name}"] = (lambda d=ckpt / f"start-{name}" / "final": load_model(d, "float32"))
    prompts, held = _rl_prompts(args, out)
    grpo = GRPOConfig(lr=args.rl_lr, steps=args.rl_steps, prompts_per_step=args.rl_prompts_per_step,
                      group_size=args.group_size, temperature=1.0, max_new_tokens=args.rl_max_new_tokens,
                      max_grad_norm=1.0, eval_every=max(1, args.rl_steps // 4), seed=args.seed)
    curve = AccuracyCurveConfig(eval_samples=4, target_samples=4, runs=1, noise_draws=64)
    df, summaries = compare_rl_starts(loaders, prompts, held, "kk", grpo, curve, ComputeConfig(progress=not args.quiet),
                                      out_dir=ckpt / "grpo", say=say)
    write_table(df, out / "rl_curves.csv")
    verdict = ordering_verdict(summaries) if len(summaries) > 1 else None
    rl_start_curves(df, summaries, out / "rl_growth.png")
    with atomic_open(out / "rl_summary.json") as f:
        json.dump({"starts": [{k: v for k, v in s.items() if k != "prediction"} | {"sft_examples": sizes[s["name"]]}
                              for s in summaries], "verdict": verdict,
                   "grpo": vars(grpo)}, f, indent=2, default=str)
    if verdict is not None:
        say(verdict_text(verdict))
    return {"summaries": summaries, "verdict": verdict, "grpo": grpo, "n_prompts": len(prompts), "n_held": len(held),
            "n_start": args.start_examples, "start_steps": args.start_steps, "sft_examples": sizes,
            "files": {f"sft-{n}": str(p) for n, (p, _) in start_data.items()}, "replay_runs": curve.replay_runs}


def cmd_demo(args: argparse.Namespace) -> None:
    """`sample-effect demo`: generate, rank, fine-tune on selections, predict, report."""
    from sample_effect.data.examples import examples_from_records, tokenize_examples
    from sample_effect.io import atomic_open
    from sample_effect.models.loading import load_model
    from sample_effect.models.registry import resolve_model
    from sample_effect.validation.selection import selection_sets, selection_verdict

    out, start_data = _check_args(args)
    t0 = time.perf_counter()
    # The model loads before anything is written, so a bad --model leaves no output behind.
    model_dir = resolve_model(args.model)
    model, tok = load_model(model_dir, "float32")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SampleEffectError(f"cannot create --out directory {out}: {exc.strerror}") from None
    say = (lambda *a: None) if args.quiet else (lambda *a: print("demo:", *a, flush=True))
    pool, target, test = _write_data(args, out)
    examples = examples_from_records(list(enumerate(pool, 1)), "pool.jsonl")
    tok_pool, _ = tokenize_examples(examples, tok)
    tok_target = _tokenized(target, "target.jsonl", tok)
    test_items = [(r["prompt"], r["answer"]) for r in test]
    say(f"{len(examples)} pool examples, {len(tok_target)} target, {len(test_items)} test puzzles; model {args.model}")

    result, table, k = _rank_pool(args, out, model, tok, tok_pool, tok_target, examples)
    say(f"ranked in {time.perf_counter() - t0:.0f}s; fine-tuning on top-{k} vs random-{k}")
    selections = selection_sets(table, k, args.random_draws, seed=args.seed)
    steps = max(1, round(args.epochs * k / 4))
    cfg = sft_recipe(args.lr, steps, args.seed, args.max_new_tokens)
    runs = _train_selections(args, model_dir, model, tok, tok_pool, tok_target, test_items, selections, cfg, say)
    # What the growth predictor said about each selection before training (same schedule, frozen gradients).
    say("predicting each selection's curve (predict-sft) to set against the real runs")
    summary = _summary(out, model, tok_pool, result, table, selections, runs, cfg, k, progress=not args.quiet)
    verdict = selection_verdict(summary) if args.random_draws >= 2 else None
    if verdict is not None:
        with atomic_open(out / "selection_verdict.json") as f:
            json.dump(verdict, f, indent=2)
        say(verdict.get("verdict", ""))
    rl = _rl_stage(args, out, model_dir, tok, say, start_data)
    per_style = table.groupby("style")["effect"].agg(["mean", "std", "count"]).sort_values("mean", ascending=False)
    elapsed = time.perf_counter() - t0
    write_report(out, args, table, per_style, summary, k, steps, elapsed, str(model_dir), rl, verdict)
    if per_style.empty:
        raise SampleEffectError("demo produced no effects")
    print(f"demo: done in {elapsed:.0f}s; report: {out / 'report.md'}")
    print(summary.to_string(index=False, float_format=lambda v: f"{v:.4g}"))


def rl_report_lines(rl: dict[str, Any] | None) -> list[str]:
    """Part 4 of the report: the RL prediction per start, the real GRPO result and the ordering verdict."""
    from sample_effect.validation.rl_starts import verdict_text

    if rl is None:
        return []
    g = rl["grpo"]
    rows = []
    for s in rl["summaries"]:
        lo, hi = s["predicted_total_change_ci95"]
        train_zv = s.get("train_zero_variance_fraction")
        n_sft = rl.get("sft_examples", {}).get(s["name"], "?")
        rep, (rlo, rhi) = s.get("predicted_total_change_replay"), s.get("predicted_replay_runs_95") or (None, None)
        replayed = "-" if rep is None else f"{rep:+.3f} [{rlo:+.3f}, {rhi:+.3f}]"
        mark = " (leaves [0, 1])" if s.get("predicted_leaves_range") else ""
        rows.append(f"| {s['name']} | {n_sft} | {s['start_accuracy']:.3f} | {s['predicted_growth_per_step']:+.4f} | "
                    f"{s['predicted_total_change']:+.3f} [{lo:+.3f}, {hi:+.3f}]{mark} | {replayed} | {s['actual_total_change']:+.3f} | "
                    f"{s['predicted_zero_variance_fraction']:.0%} | {'-' if train_zv is None else f'{train_zv:.0%}'} |")
    verdict = rl["verdict"]
    files = rl.get("files") or {}
    from_files = (" " + "; ".join(f"{name} is fine-tuned on the examples of `{path}`" for name, path in files.items())
                  + ", with the same recipe." if files else "")
    return [
        "## 4. Which SFT start makes RL grow fastest?",
        "",
        f"A style start is the base model fine-tuned on {rl['n_start']} fresh puzzles in one response "
        f"style, with the selections' recipe run for {rl.get('start_steps', '?')} steps.{from_files} Before any RL, "
        f"`predict-rl` predicted the growth of held-out accuracy ({rl['n_held']} puzzles, 4 samples each at "
        f"temperature 1) per GRPO step under the all-or-nothing `kk` reward: the positive effect plus the AdamW "
        f"batch-noise term, with a 95% interval, from {g.group_size} rollouts of each of {rl['n_prompts']} training "
        f"puzzles. Then a real GRPO run ({g.steps} steps, {g.prompts_per_step} prompts x {g.group_size} rollouts, "
        f"lr {g.lr}, clip 1.0) started from the same weights.",
        "",
        "| start | SFT examples | accuracy at step 0 | predicted growth / step | predicted change [95%] | "
        "replayed change [95% of runs] | actual change | zero-variance groups (start) | (during GRPO) |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        "The predicted change is the first step's expected change times the lr-weighted step count. The replayed "
        f"change runs the whole schedule on the start's frozen gradients with AdamW's moments carried, over "
        f"{rl.get('replay_runs', '?')} batch orders; its interval is the spread of those runs, not a confidence interval. Both are first order. "
        "At this lr an AdamW step already reaches the curvature of held-out accuracy, so read them as the start's "
        "first-step growth, not as the change of the run (docs/experiments.md, Q2e). A prediction marked "
        "'leaves [0, 1]' moves accuracy further than it can go.",
        "",
        f"**Verdict.** {verdict_text(verdict)}" if verdict is not None else "One start only: no ordering to check.",
        "",
        "One GRPO run per start and a few held-out puzzles: the actual change carries sampling noise of the "
        "order of 1/sqrt(puzzles x samples). Checkpoints: checkpoints/start-NAME/final (SFT) and "
        "checkpoints/grpo/sft-NAME/run-0/final (GRPO); the rows are in rl_curves.csv and rl_summary.json, the "
        "puzzles in rl_prompts.jsonl (training) and rl_eval.jsonl (held out).",
        "",
        "![RL growth](rl_growth.png)",
        "",
    ]


def selection_verdict_lines(verdict: dict[str, Any] | None) -> list[str]:
    """The selection check in numbers: top-k and bottom-k against the random runs' mean and 95% intervals."""
    if verdict is None:
        return []
    lines = [f"Against {verdict['n_random']} random selections (mean, 95% interval of the mean, 95% prediction "
             "interval of one more random run):", "",
             "| metric | top-k | random mean [95% CI] | random prediction interval | bottom-k |", "|---|---|---|---|---|"]
    for metric, name in (("target_loss_end", "target loss at the end"), ("accuracy_end", "test accuracy at the end")):
        m = verdict.get(metric)
        if m is None:
            continue
        (clo, chi), (plo, phi) = m["random_mean_ci95"], m["random_prediction_interval95"]
        lines.append(f"| {name} | {m['top']:.3f} | {m['random_mean']:.3f} [{clo:.3f}, {chi:.3f}] | "
                     f"[{plo:.3f}, {phi:.3f}] | {m['bottom']:.3f} |")
    return [*lines, "", f"**Verdict.** {verdict.get('verdict', 'no loss metric')}.", ""]


def _versions() -> str:
    """Python and the numerical packages the numbers came from (two installs can differ in the last digits)."""
    import platform

    import numpy
    import torch
    import transformers

    return (f"Python {platform.python_version()}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"transformers {transformers.__version__}, numpy {numpy.__version__}")


def write_report(out: Path, args, table, per_style, summary, k, steps, elapsed, model_desc, rl=None, verdict=None) -> None:  # type: ignore[no-untyped-def]
    from sample_effect.io import atomic_open

    lines = [
        "# sample-effect demo: which Knights-and-Knaves examples move the model?",
        "",
        f"Model: `{model_desc}`. SFT pool: {len(table)} examples ({args.n_pool} puzzles with 2-3 people, each "
        "written in three response styles). Target: the loss of the correct `\\boxed{...}` answers on "
        f"{args.n_target} held-out puzzles; the sample effect of an example is the first-order drop of that "
        "loss per unit learning rate after one AdamW step (fresh state, clip 1.0) on the example alone.",
        "",
        "## 1. Dataset effect per response style",
        "",
        "| style | mean effect | std | n |",
        "|---|---|---|---|",
        *[f"| {s} | {r['mean']:.4g} | {r['std']:.3g} | {int(r['count'])} |" for s, r in per_style.iterrows()],
        "",
        "![effects by style](effects_by_style.png)",
        "",
        "## 2. Does the ranking pick data that helps?",
        "",
        f"Fine-tuning the base model for {steps} AdamW steps (batch 4, lr {args.lr}) on {k} examples chosen by "
        "effect (top / bottom) or at random. Target loss is the held-out answer loss above; accuracy is greedy "
        f"decoding on {args.n_test} other held-out puzzles under the K&K reward (finished, and the boxed roles "
        "match).",
        "",
        "| selection | mean effect | target loss start -> end | accuracy start -> end |",
        "|---|---|---|---|",
        *[
            f"| {r['selection']} | {r['mean_effect']:.4g} | {r['target_loss_start']:.3f} -> {r['target_loss_end']:.3f} | "
            f"{r['accuracy_start']:.3f} -> {r['accuracy_end']:.3f} |"
            for _, r in summary.iterrows()
        ],
        "",
        *selection_verdict_lines(verdict),
        "![target loss](selection_loss.png)",
        "",
        "### Predicted before training vs what happened",
        "",
        "`predict-sft` replayed the same schedule on gradients frozen at the base weights (positive effect plus the "
        "AdamW batch-noise term, 4 Monte Carlo batch orders). It is a first-order prediction: at this lr it "
        "overshoots the size of the drop by a wide margin (the loss is curved), so read it for the order of the "
        "selections, not the magnitude; the first step alone is where it should be close.",
        "",
        "| selection | predicted drop (all steps) | actual drop | predicted drop, step 1 |",
        "|---|---|---|---|",
        *[
            f"| {r['selection']} | {r['predicted_drop']:.4g} | {r['actual_drop']:.4g} | {r['predicted_drop_step1']:.4g} |"
            for _, r in summary.iterrows()
        ],
        "",
        "![predicted vs actual](predicted_vs_actual.png)",
        "",
        "![accuracy](selection_accuracy.png)",
        "",
        f"## 3. Top {min(10, len(table))} examples",
        "",
        "| rank | id | style | effect | loss | response tokens |",
        "|---|---|---|---|---|---|",
        *[
            f"| {int(r['rank'])} | {r['id']} | {r['style']} | {r['effect']:.4g} | {r['loss']:.3f} | {int(r['n_tokens'])} |"
            for _, r in table.head(10).iterrows()
        ],
        "",
        *rl_report_lines(rl),
        f"Files: effects.csv (every example, ranked), top_k.jsonl (the top {k} in input format), selection.csv, "
        "pool.jsonl, target.jsonl, test.jsonl, the fine-tuned checkpoints under checkpoints/ (model, tokenizer, "
        "optimizer state), and the figures above.",
        "",
        f"Run time: {elapsed:.0f} s. {_versions()}.",
    ]
    with atomic_open(out / "report.md") as f:
        f.write("\n".join(lines) + "\n")
