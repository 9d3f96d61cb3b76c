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
    add_accuracy_target_args,
    add_cache_args,
    add_common_args,
    add_data_format_args,
    add_engine_args,
    add_lora_args,
    data_format_from_args,
    engine_configs_from_args,
    load_model_from_args,
    positive_int,
    require_parquet,
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
    tg = p.add_mutually_exclusive_group(required=True)
    tg.add_argument("--target-data", metavar="FILE", help="G = -grad of the mean loss over this SFT data (same formats as --data)")
    tg.add_argument("--target", choices=["self"], help="'self': G = -grad of the mean loss over --data itself")
    tg.add_argument("--direction", nargs=2, metavar=("BASE", "FINAL"), help="G = theta_FINAL - theta_BASE (checkpoint dirs)")
    tg.add_argument("--target-prompts", metavar="FILE", help="G = grad of test accuracy on these RL prompts (REINFORCE)")
    p.add_argument("--normalize", action="store_true", help="with --direction: scale G to unit norm")
    add_accuracy_target_args(p)
    p.add_argument("--out", default=None, help="output table, .csv or .parquet (required unless --explain)")
    add_engine_args(p)
    p.add_argument("--projection", metavar="DIR",
                   help="score from a cache written by `sample-effect project` (estimate <P d, P G>; no gradients "
                   "recomputed; default: exact effects)")
    p.add_argument("--top-k", type=positive_int, default=None, help="with --export: how many top examples to export")
    add_lora_args(p)
    p.add_argument("--export", metavar="FILE.jsonl", help="write the top-k examples in the input's own format")
    add_cache_args(p)  # --cache-dir, --resume, --shard-size
    add_common_args(p)
    add_data_format_args(p)
    p.set_defaults(func=cmd_rank)


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
    if args.normalize and not args.direction:
        raise SampleEffectError("--normalize only applies to --direction")
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
    from sample_effect.targets.core import SelfTarget

    fmt = data_format_from_args(args)
    out = _check_outputs(args)
    update, compute = engine_configs_from_args(args)

    t0 = time.perf_counter()
    examples = load_examples(args.data, data_format=fmt)
    target_examples = load_examples(args.target_data, data_format=fmt) if args.target_data else None
    model, tokenizer = load_model_from_args(args)
    tokenized, report = tokenize_examples(examples, tokenizer, args.max_length)
    if report.n_truncated:
        log.warning("%d sequence(s) of --data truncated to --max-length %d", report.n_truncated, args.max_length)
    target = target_from_args(args, tokenizer, target_examples) or SelfTarget()
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


def _score(args: argparse.Namespace, model: Any, tokenizer: Any, tokenized: list, target: Any, update: Any,
           compute: Any) -> Any:
    """The EffectResult by the path the flags choose: projection cache, resumable cache / torchrun, or in memory."""
    from sample_effect.engine.effects import score_examples_result
    from sample_effect.runtime.distributed import is_distributed

    if args.projection and (args.cache_dir or is_distributed()):
        raise SampleEffectError("--projection scores a finished projection cache; it takes no --cache-dir or torchrun")
    if args.projection:
        return projected_result(args, model, tokenized, target, update, compute)
    if args.cache_dir or args.resume or is_distributed():
        from sample_effect.store.cache import score_rank

        return score_rank(model, tokenized, target, update, params=args.params, optimizer_state=args.optimizer_state,
                          compute=compute, cache_dir=args.cache_dir, shard_size=args.shard_size, resume=args.resume)
    return score_examples_result(
        model, tokenizer, tokenized, target, update, params=args.params, optimizer_state=args.optimizer_state,
        compute=compute,
    )


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


def projected_result(args: argparse.Namespace, model: Any, tokenized: list, target: Any, update: Any,
                     compute: Any) -> Any:
    """An EffectResult estimated from the --projection cache (checked to match the model, data and update)."""
    import numpy as np

    from sample_effect.engine.effects import EffectResult
    from sample_effect.engine.projection import load_projection, settings_key
    from sample_effect.models.loading import select_parameters
    from sample_effect.targets.core import resolve_target

    cache = load_projection(args.projection)
    chosen = select_parameters(model, args.params)
    if list(chosen) != cache.manifest["params"] or settings_key(model, chosen, tokenized, update, cache.config) != cache.manifest["key"]:
        raise SampleEffectError(
            f"--projection {args.projection} was made with other weights, data, parameters or update settings; "
            "pass the same --model/--data/--params/--optimizer/--lr/--max-grad-norm... as to `project`"
        )
    g = resolve_target(target, model, chosen, tokenized, compute)
    effect = cache.scores(g.vector)
    return EffectResult(
        ids=cache.ids, effect=effect, loss=cache.loss, grad_norm=np.full(len(effect), np.nan),
        n_tokens=np.array([ex.n_tokens for ex in tokenized]), n_responses=np.array([ex.n_responses for ex in tokenized]),
        target=g,
    )
