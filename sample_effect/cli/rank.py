"""`sample-effect rank`: score every example of an SFT set by its sample effect and write a ranked table."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

from sample_effect.cli.options import (
    TABLE_SUFFIXES,
    SubParsers,
    add_cache_args,
    add_chat_template_arg,
    add_common_args,
    add_data_format_args,
    add_engine_args,
    add_lora_args,
    add_target_args,
    check_target_args,
    data_format_from_args,
    engine_configs_from_args,
    load_model_from_args,
    nonneg_int,
    positive_int,
    require_parquet,
    target_examples_from_args,
    target_from_args,
)
from sample_effect.errors import SampleEffectError

log = logging.getLogger("sample_effect")


def add_parsers(sub: SubParsers) -> None:
    """Register `rank`."""
    p = sub.add_parser(
        "rank",
        help="score every example of an SFT set by its sample effect and rank them",
        description="Score every example of an SFT JSONL file by its sample effect e(s) = <delta_theta(s), G> / lr "
        "toward a target, and write a ranked table (rank 1 = most helpful).",
    )
    p.add_argument("--model", required=True, help="local model directory (config, weights, tokenizer)")
    p.add_argument("--data", required=True, help="SFT data to score ({id, prompt, response} or {id, messages}): "
                   "JSONL, .parquet, or a `datasets` directory saved with save_to_disk")
    add_target_args(p, ("data", "self", "direction", "prompts"))
    add_chat_template_arg(p)  # the --target-prompts are sampled; SFT chat data always uses the tokenizer's template
    p.add_argument("--out", default=None, help="output table, .csv or .parquet (required unless --explain)")
    add_engine_args(p)
    p.add_argument("--projection", metavar="DIR",
                   help="score from a cache written by `sample-effect project` (estimate <P d, P G>; no gradients "
                   "recomputed; default: exact effects)")
    p.add_argument("--trajectory", metavar="RUN_DIR",
                   help="sum effects over a real run's saved checkpoints (RUN_DIR/checkpoint-STEP with optimizer.pt, "
                   "as train-sft --save-every writes them), each with its own AdamW state and lr, --model being the "
                   "run's start; the effect column is then sum_k (lr_k / --lr) e_k (TracIn-style, with the trainer's "
                   "update; see docs/quality.md)")
    p.add_argument("--top-k", type=positive_int, default=None, help="with --export: how many top examples to export")
    add_lora_args(p)
    p.add_argument("--export", metavar="FILE.jsonl", help="write the top-k examples in the input's own format")
    add_cache_args(p)  # --cache-dir, --resume, --shard-size
    add_stability_args(p)
    add_common_args(p)
    add_data_format_args(p)
    p.set_defaults(func=cmd_rank)


def add_stability_args(p: argparse.ArgumentParser) -> None:
    """--stability and its settings: how stable the top-k is under resampled targets, checkpoints and orders."""
    g = p.add_argument_group("rank stability (with --stability)")
    g.add_argument("--stability", action="store_true",
                   help="after ranking, re-rank under bootstrap-resampled target sets, other checkpoints and other "
                   "example orders, and report Spearman and top-k overlap with the ranking, with intervals")
    g.add_argument("--stability-resamples", type=nonneg_int, default=None, metavar="N",
                   help="bootstrap resamples of the target set (0 = none; needs --target-data or --target self) "
                   "(default: 8)")
    g.add_argument("--stability-checkpoints", nargs="+", default=None, metavar="DIR",
                   help="other model directories to rank at, e.g. the last saved checkpoints of the run (default: none)")
    g.add_argument("--stability-orders", type=nonneg_int, default=None, metavar="N",
                   help="extra shuffled example orders / chunk sizes; these must agree exactly with the ranking "
                   "(default: 2)")
    g.add_argument("--stability-top-k", type=positive_int, default=None, metavar="K",
                   help="k of the top-k overlap (default: --top-k if given, else 10)")
    g.add_argument("--stability-seed", type=int, default=0, metavar="SEED", help="seed of the resamples and orders")
    g.add_argument("--stability-out", metavar="FILE", default=None,
                   help="table of every comparison, .csv or .parquet (default: <--out stem>.stability.csv next to --out)")


STABILITY_OPTIONS = ("stability_resamples", "stability_checkpoints", "stability_orders", "stability_top_k",
                     "stability_out")


def _stability_plan(args: argparse.Namespace, out: Path | None) -> tuple[Path, Any] | None:
    """--stability's output file (--stability-out or next to --out) and its validated StabilityConfig, both
    checked before any compute; None without --stability (or with --explain)."""
    from sample_effect.io import check_output_path

    given = [f"--{name.replace('_', '-')}" for name in STABILITY_OPTIONS if getattr(args, name, None) is not None]
    if given and not args.stability:
        raise SampleEffectError(f"{given[0]} only applies with --stability")
    if not args.stability or out is None:
        return None
    if args.projection:
        raise SampleEffectError("--stability re-scores the examples exactly; it does not combine with --projection")
    if args.stability_checkpoints and args.lora_r:
        raise SampleEffectError("--stability-checkpoints with --lora-r: fresh adapters differ per model; pass adapter "
                                "directories as --model and --stability-checkpoints instead")
    path = Path(args.stability_out) if args.stability_out else out.with_name(f"{out.stem}.stability.csv")
    if path.suffix.lower() not in TABLE_SUFFIXES:
        raise SampleEffectError(f"--stability-out must end in .csv or .parquet, got '{path.name}'")
    if path.suffix.lower() == ".parquet":
        require_parquet()
    if path.resolve() in {out.resolve(), *([Path(args.export).resolve()] if args.export else [])}:
        raise SampleEffectError("--stability-out must differ from --out and --export")
    check_output_path(path, args.overwrite)
    return path, _stability_config(args)


def _stability_config(args: argparse.Namespace) -> Any:
    """The StabilityConfig of the --stability-* flags; no target resampling for a target that is not a loss over examples."""
    from sample_effect.models.loading import check_model_dir
    from sample_effect.models.registry import resolve_model
    from sample_effect.runtime.distributed import is_distributed
    from sample_effect.validation.stability import StabilityConfig

    if is_distributed():
        raise SampleEffectError("--stability runs in one process; run it without torchrun")
    resamples = 8 if args.stability_resamples is None else args.stability_resamples
    if not (args.target_data or args.target == "self") and resamples:
        if args.stability_resamples:
            raise SampleEffectError("--stability-resamples resamples a target set: it needs --target-data or --target self")
        log.warning("--stability: the target is not a loss over examples, so there is no target set to resample; "
                    "target resampling skipped")
        resamples = 0
    for spec in args.stability_checkpoints or []:
        try:
            check_model_dir(resolve_model(spec))
        except SampleEffectError as exc:
            raise SampleEffectError(f"--stability-checkpoints: {exc}") from None
    return StabilityConfig(
        resamples=resamples, checkpoints=list(args.stability_checkpoints or []),
        orders=2 if args.stability_orders is None else args.stability_orders,
        top_k=args.stability_top_k or args.top_k or 10, seed=args.stability_seed,
    ).validate()


def _check_outputs(args: argparse.Namespace) -> Path | None:
    """--out (and --export) checked before any compute; None with --explain (which writes nothing)."""
    from sample_effect.io import check_output_path

    if args.out is None and not args.explain:
        raise SampleEffectError("rank needs --out FILE (.csv or .parquet); only --explain runs without one")
    out = None if args.out is None else Path(args.out)
    if out is not None and out.suffix.lower() not in TABLE_SUFFIXES:
        raise SampleEffectError(f"--out must end in .csv or .parquet, got '{out.name}'")
    if out is not None and out.suffix.lower() == ".parquet" and not args.explain:
        require_parquet()
    if (args.export is None) != (args.top_k is None):
        raise SampleEffectError("--top-k and --export go together")
    check_target_args(args)
    if args.explain or out is None:
        return None
    check_output_path(out, args.overwrite)
    if args.export:
        check_output_path(args.export, args.overwrite)
        if Path(args.export).resolve() == out.resolve():
            raise SampleEffectError("--export and --out must be different files")
    return out


def cmd_rank(args: argparse.Namespace) -> None:
    """`sample-effect rank`: load, score, rank, write."""
    from sample_effect.data.examples import load_examples, tokenize_examples

    fmt = data_format_from_args(args)
    out = _check_outputs(args)
    stability = _stability_plan(args, out)
    update, compute = engine_configs_from_args(args)

    t0 = time.perf_counter()
    examples = load_examples(args.data, data_format=fmt)
    target_examples = target_examples_from_args(args)
    model, tokenizer = load_model_from_args(args)
    tokenized, report = tokenize_examples(examples, tokenizer, args.max_length)
    if report.n_truncated:
        log.warning("%d sequence(s) of --data truncated to --max-length %d", report.n_truncated, args.max_length)
    target = target_from_args(args, tokenizer, target_examples)
    if args.explain:
        from sample_effect.engine.planner import make_plan
        from sample_effect.models.loading import select_parameters

        print(make_plan(model, select_parameters(model, args.params), tokenized, update, compute).render())
        return
    assert out is not None
    result = _score(args, model, tokenizer, tokenized, target, update, compute)
    if result is None:  # a torchrun rank other than 0: rank 0 writes the output
        return
    _write(args, out, result, examples, t0)
    if stability is not None:
        _stability(args, stability, (model, tokenizer), (examples, target_examples), target, (update, compute), result)


def _stability(args: argparse.Namespace, plan: tuple[Path, Any], loaded: tuple[Any, Any], data: tuple[list, list | None],
               target: Any, configs: tuple[Any, Any], result: Any) -> None:
    """`--stability`: re-rank under resampled targets, checkpoints and orders; write the rows, print the summary."""
    from sample_effect.io import write_table
    from sample_effect.scoring.effects import ScoringConfig
    from sample_effect.validation.stability import rank_stability

    path, config = plan
    examples, target_examples = data
    resample_set = (target_examples if target_examples is not None else examples) if config.resamples else None
    scoring = ScoringConfig(*configs, params=args.params, optimizer_state=args.optimizer_state, max_length=args.max_length)
    report = rank_stability(
        *loaded, examples, resample_set, scoring, None, config, lambda p: load_model_from_args(args, spec=p),
        target=target, reference=result,
    )
    write_table(report.rows, path)
    print(report.render())
    print(f"wrote {len(report.rows)} stability comparisons to {path}")


def _score(args: argparse.Namespace, model: Any, tokenizer: Any, tokenized: list, target: Any, update: Any,
           compute: Any) -> Any:
    """The Effects by the path the flags choose: projection cache, resumable cache / torchrun, or in memory."""
    from sample_effect.runtime.distributed import is_distributed
    from sample_effect.scoring.effects import resolve_state, score_examples_result

    if args.projection and (args.cache_dir or is_distributed()):
        raise SampleEffectError("--projection scores a finished projection cache; it takes no --cache-dir or torchrun")
    if args.trajectory:
        if args.projection or args.cache_dir or args.resume or is_distributed():
            raise SampleEffectError("--trajectory scores in memory; it takes no --projection, --cache-dir, --resume or torchrun")
        return _trajectory(args, model, tokenizer, tokenized, target, update, compute)
    if args.projection:
        from sample_effect.models.loading import select_parameters
        from sample_effect.scoring.run import ScoringRun
        from sample_effect.store.projection import projected_result

        chosen = select_parameters(model, args.params)
        state = resolve_state(model, chosen, update, args.optimizer_state)
        return projected_result(ScoringRun(model, chosen, tokenized, update, state, compute), target, args.projection)
    if args.cache_dir or args.resume or is_distributed():
        from sample_effect.store.cache import score_rank

        return score_rank(model, tokenized, target, update, params=args.params, optimizer_state=args.optimizer_state,
                          compute=compute, cache_dir=args.cache_dir, shard_size=args.shard_size, resume=args.resume)
    return score_examples_result(
        model, tokenizer, tokenized, target, update, params=args.params, optimizer_state=args.optimizer_state,
        compute=compute,
    )


def _trajectory(args: argparse.Namespace, model: Any, tokenizer: Any, tokenized: list, target: Any, update: Any,
                compute: Any) -> Any:
    """`--trajectory`: the Effects whose effect is sum over the run's points of (lr_k / lr) e_k; loss at the start."""
    import numpy as np
    import torch

    from sample_effect.engine.core import example_loss_values
    from sample_effect.models.loading import select_parameters
    from sample_effect.scoring.checkpoints import (
        Checkpoint,
        run_checkpoints,
        trajectory_effect_matrix,
    )
    from sample_effect.scoring.run import effect_result
    from sample_effect.targets.core import resolve_target

    if getattr(args, "lora_r", None):
        raise SampleEffectError("--trajectory reads full checkpoints; it does not combine with --lora-r")

    base = "<--model>"
    points = run_checkpoints(args.trajectory, base=base, lr=update.lr)
    if args.optimizer_state:
        points[0] = Checkpoint(base, str(args.optimizer_state), update.lr, 0)
    if len(points) == 1:
        raise SampleEffectError(f"--trajectory {args.trajectory} holds no checkpoint-STEP directory with an optimizer.pt")
    log.info("--trajectory: %d points (steps %s)", len(points), ", ".join(str(c.step) for c in points))

    def load(path: str) -> tuple[Any, Any]:
        return (model, tokenizer) if path == base else load_model_from_args(args, spec=path)

    matrix = trajectory_effect_matrix(points, load, tokenized, [target], update, params=args.params, compute=compute)
    chosen = select_parameters(model, args.params)
    g = resolve_target(target, model, chosen, tokenized, compute)
    with torch.no_grad():
        loss = example_loss_values(model, tokenized).double().cpu().numpy()
    return effect_result(tokenized, matrix[:, 0] / update.lr, loss, np.full(len(tokenized), np.nan), g)


def _write(args: argparse.Namespace, out: Path, result: Any, examples: list, t0: float) -> None:
    """Write the ranked table (and the --export), then the one-line summary."""
    from sample_effect.io import write_table

    table = result.table()
    write_table(table, out)
    if args.export:
        from sample_effect.data.examples import export_examples

        by_id = {ex.id: ex for ex in examples}
        export_examples([by_id[i] for i in table["id"].head(args.top_k)], args.export)
    top = table.iloc[0]
    print(
        f"scored {len(table)} examples ({int(table['n_responses'].sum())} responses) toward '{result.target.kind}' "
        f"in {time.perf_counter() - t0:.1f}s; top: '{top['id']}' (effect {top['effect']:.4g}); wrote {out}"
        + (f" and the top {min(args.top_k, len(table))} to {args.export}" if args.export else "")
    )
