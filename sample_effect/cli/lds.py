"""`sample-effect validate lds`: the linear datamodeling score of the ranking's effects on real SFT retrains."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from sample_effect.cli.options import (
    SubParsers,
    add_common_args,
    add_data_format_args,
    add_device_arg,
    add_target_args,
    data_format_from_args,
)
from sample_effect.errors import SampleEffectError


def add_validate_parsers(checks: SubParsers) -> None:
    """Register `validate lds`."""
    p = checks.add_parser(
        "lds", help="linear datamodeling score: summed effects vs real SFT retrains on random subsets",
        description="Train the real SFT trainer on --subsets random subsets (--fraction of --data, --runs seeds each), "
        "measure the loss of every --target-data example, and score each method's prediction for each subset (the "
        "sum of its effects over the subset; for predict-sft the replayed schedule) by Spearman across subsets: per "
        "target example (lds, their mean) and for the mean target (lds_mean_target), with bootstrap 95%% intervals "
        "over subsets. Retrains and effects are cached in OUT/cache: adding a method or rerunning retrains nothing. "
        "Writes OUT/lds.json, OUT/lds_subsets.csv and OUT/lds.png.",
    )
    p.add_argument("--model", required=True, help="the base checkpoint every subset is fine-tuned from (or 'tiny')")
    p.add_argument("--data", required=True, help="the pool: SFT JSONL (or .parquet, or a saved `datasets` dir)")
    add_target_args(p, ("data",), helps={"data": "held-out SFT examples; the target is each one's loss and their mean"})
    p.add_argument("--subsets", type=int, default=32, help="random subsets M (default 32)")
    p.add_argument("--fraction", type=float, default=0.5, help="share of the pool in each subset (default 0.5)")
    p.add_argument("--runs", type=int, default=1, help="trainer seeds per subset (default 1)")
    p.add_argument("--methods", default="sgd,sgd-clip,adamw,adamw-trajectory,adamw-final,predict-sft",
                   help="sgd, sgd-clip, adamw (the trainer's AdamW, fresh), adamw-trajectory (lr x effect summed over "
                   "--checkpoints points of one real run on the whole pool, with the saved AdamW state), adamw-final "
                   "(the trainer's AdamW step at the end of that run, with its final state), predict-sft "
                   "(the replayed schedule; mean target only), comma-separated (default: all)")
    p.add_argument("--checkpoints", type=int, default=4,
                   help="adamw-trajectory: points of the run effects are summed over, the base included (default 4)")
    p.add_argument("--scores", action="append", default=None, metavar="NAME=FILE",
                   help="an outside method's scores to judge on the same retrains (repeatable): a .npy [n] or [n, T] "
                   "in the pool's order, or a CSV with an id column and one score column (or one per target example); "
                   "larger = predicted to lower the target loss more")
    p.add_argument("--lr", type=float, default=1e-4, help="AdamW lr of the retrains and of the simulated steps (default 1e-4)")
    p.add_argument("--batch-size", type=int, default=4, help="SFT batch size (default 4)")
    p.add_argument("--steps", type=int, default=None, help="SFT steps per retrain (default: from --epochs)")
    p.add_argument("--epochs", type=float, default=1.0, help="passes over the subset (default 1)")
    p.add_argument("--max-grad-norm", type=float, default=1.0, help="the trainer's clipping; 0 = none (default 1.0)")
    p.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay (default 0)")
    p.add_argument("--schedule", default="constant", help="constant or cosine (default constant)")
    p.add_argument("--seed", type=int, default=0, help="seed of the subsets and the first trainer seed (default 0)")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap draws of the intervals (default 1000)")
    p.add_argument("--dtype", default="float32", help="float32 (default), float64 or bfloat16")
    add_device_arg(p)
    p.add_argument("--max-length", type=int, default=None, help="truncate sequences to this many tokens")
    p.add_argument("--out", required=True, help="output directory")
    add_data_format_args(p)
    add_common_args(p)
    p.set_defaults(func=cmd_validate_lds)


def cmd_validate_lds(args: argparse.Namespace) -> None:
    """Retrain (cached), score every method, write lds.json, the per-subset table and the figure."""
    import numpy as np
    import pandas as pd

    from sample_effect.data.examples import load_examples, tokenize_examples
    from sample_effect.engine.core import ComputeConfig
    from sample_effect.io import atomic_open, write_table
    from sample_effect.models.loading import load_model
    from sample_effect.models.registry import resolve_model
    from sample_effect.plots.figures import lds_figure
    from sample_effect.training import SFTConfig
    from sample_effect.training.common import adamw_update
    from sample_effect.validation.lds import (
        METHODS,
        LDSConfig,
        LDSTask,
        draw_subsets,
        lds_table,
        load_scores,
        method_values,
        prediction_key,
        retrain_seconds,
        retrain_subsets,
        seed_agreement,
        summed_effects,
        target_losses,
    )

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise SampleEffectError(f"--methods: unknown method {bad or args.methods!r}; choose from {', '.join(METHODS)}")
    outside = _parse_scores(args.scores or [], methods)
    cfg = LDSConfig(subsets=args.subsets, fraction=args.fraction, runs=args.runs, n_boot=args.bootstrap,
                    seed=args.seed).validate()
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise SampleEffectError(f"--out must be a directory, but {out} is a file")
    if (out / "lds.json").exists() and not args.overwrite:
        raise SampleEffectError(f"{out / 'lds.json'} exists; pass --overwrite to replace it (the cache is reused)")
    sft = SFTConfig(update=adamw_update(args.lr, args.max_grad_norm or None, args.weight_decay),
                    schedule=args.schedule, batch_size=args.batch_size, epochs=args.epochs, max_steps=args.steps,
                    seed=args.seed).validate()
    path = str(resolve_model(args.model))
    model, tok = load_model(path, args.dtype, device=args.device)
    fmt = data_format_from_args(args)
    pool = tokenize_examples(load_examples(args.data, data_format=fmt), tok, args.max_length)[0]
    target = tokenize_examples(load_examples(args.target_data, data_format=fmt), tok, args.max_length)[0]
    subsets = draw_subsets(len(pool), cfg)
    say = None if args.quiet else (lambda m: print(f"lds: {m}", flush=True))
    out.mkdir(exist_ok=True)
    cache = out / "cache"
    t0 = time.perf_counter()
    base = target_losses(model, target)
    after = retrain_subsets(lambda: load_model(path, args.dtype, device=args.device), path, pool, target, sft, subsets, cfg.runs, cache, say)
    retrain_s = time.perf_counter() - t0
    actual = base[None, :] - after.mean(1)  # [M, T] drops
    compute = ComputeConfig(progress=False)
    predictions, seconds = {}, {}
    digest = prediction_key(pool, target, sft, path, subsets)
    task = LDSTask(pool, target, sft, subsets, path, lambda p: load_model(p, args.dtype, device=args.device))
    for m in methods:
        t1 = time.perf_counter()
        tag = f"{m}-k{args.checkpoints}" if m in ("adamw-trajectory", "adamw-final") else m
        f = cache / f"{'drops' if m == 'predict-sft' else 'effects'}-{tag}-{digest}.npy"
        timing = f.with_suffix(".json")  # the seconds the computation took, reported again when it is reused
        if not f.exists():
            value = method_values(m, task, (model, tok), args.checkpoints, cache, compute, say)
            with atomic_open(f, "wb") as fh:
                np.save(fh, value)
            with atomic_open(timing) as fh:
                json.dump({"seconds": time.perf_counter() - t1}, fh)
        value = np.load(f)
        predictions[m] = value if m == "predict-sft" else summed_effects(value, subsets)
        seconds[m] = json.loads(timing.read_text())["seconds"] if timing.exists() else float("nan")
        if say:
            say(f"{m}: predictions for {len(subsets)} subsets ({seconds[m]:.0f} s)")
    for name, file in outside.items():
        predictions[name] = summed_effects(load_scores(file, pool, len(target)), subsets)
        seconds[name] = float("nan")
    table = lds_table(predictions, actual, cfg.n_boot)
    for m in predictions:
        table[m]["seconds"] = seconds[m]
    rows = pd.DataFrame({"subset": range(len(subsets)), "size": [len(s) for s in subsets],
                         "actual_mean_drop": actual.mean(1),
                         **{f"predicted_{m}": np.asarray(p).reshape(len(subsets), -1).mean(1) for m, p in predictions.items()}})
    doc = {"methods": table, "subsets": cfg.subsets, "fraction": cfg.fraction, "runs": cfg.runs,
           "pool": len(pool), "target": len(target), "model": args.model,
           "base_target_loss": float(base.mean()), "retrained_target_loss": float(after.mean()),
           "retrain_seconds": retrain_s, "retrain_seconds_recorded": retrain_seconds(cache),
           "sft": json.loads(json.dumps(sft.__dict__, default=str)),
           "noise": seed_agreement(after)}
    with atomic_open(out / "lds.json") as fh:
        json.dump(doc, fh, indent=1, default=str)
    write_table(rows, out / "lds_subsets.csv")
    lds_figure(rows, table, out / "lds.png")
    _print_summary(doc)
    print(f"wrote {out / 'lds.json'}, {out / 'lds_subsets.csv'}, {out / 'lds.png'}")


def _print_summary(doc: dict) -> None:
    """One line per method (LDS and mean-target Spearman with intervals, compute time), then the retraining noise."""
    import math

    for m, v in doc["methods"].items():
        lo, hi = v["lds_mean_target_ci95"]
        per = "" if v["lds"] is None else f"LDS {v['lds']:+.3f} [{v['lds_ci95'][0]:+.3f}, {v['lds_ci95'][1]:+.3f}], "
        took = "" if math.isnan(v["seconds"]) else f" ({v['seconds']:.0f} s)"
        print(f"{m}: {per}mean target {v['lds_mean_target']:+.3f} [{lo:+.3f}, {hi:+.3f}]{took}")
    if doc["noise"] is not None:
        n = doc["noise"]
        print(f"retraining noise: two seeds' drops agree at Spearman {n['seed_agreement']:+.3f} per target example "
              f"({n['seed_agreement_mean_target']:+.3f} for the mean target); no method can be expected above about "
              f"{n['lds_ceiling']:.2f}")


def _parse_scores(items: list[str], methods: list[str]) -> dict[str, str]:
    """NAME=FILE pairs of --scores; a name may not repeat or shadow a built-in method."""
    out: dict[str, str] = {}
    for item in items:
        name, sep, file = item.partition("=")
        if not sep or not name or not file:
            raise SampleEffectError(f"--scores takes NAME=FILE, got {item!r}")
        if name in out or name in methods:
            raise SampleEffectError(f"--scores: the name '{name}' is used twice")
        out[name] = file
    return out
