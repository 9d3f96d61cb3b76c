"""`sample-effect project`: cache random projections of per-example updates; `rank --projection` scores them."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from sample_effect.cli.options import (
    PROJECTION_KINDS,
    SubParsers,
    add_common_args,
    add_data_format_args,
    add_engine_args,
    add_lora_args,
    data_format_from_args,
    engine_configs_from_args,
    load_model_from_args,
)
from sample_effect.errors import SampleEffectError


def add_parsers(sub: SubParsers) -> None:
    """Register `project` with the same model, data and engine arguments as `rank`."""
    p = sub.add_parser(
        "project",
        help="write random projections of every example's simulated update to a cache directory",
        description="Project each example's simulated update per unit lr (clipped, optimiser-transformed) to --dim "
        "dimensions with a seeded random matrix and write shards + manifest to --out. `rank --projection DIR` then "
        "scores them against any target without recomputing gradients. Re-running the same command resumes.",
    )
    p.add_argument("--model", required=True, help="local model directory (config, weights, tokenizer)")
    p.add_argument("--data", required=True, help="SFT JSONL to project")
    p.add_argument("--out", required=True, metavar="DIR", help="cache directory (created; resumed if it holds the same run)")
    p.add_argument("--dim", type=int, default=256, help="projection dimension k")
    p.add_argument("--projection", dest="kind", default="rademacher", choices=PROJECTION_KINDS, help="entries of P")
    p.add_argument("--seed", type=int, default=0, help="seed of P")
    add_engine_args(p)
    add_lora_args(p)
    add_common_args(p)
    add_data_format_args(p)
    p.set_defaults(func=cmd_project)


def cmd_project(args: argparse.Namespace) -> None:
    """Load, tokenise, project, write shards."""
    from sample_effect.data.examples import load_examples, tokenize_examples
    from sample_effect.engine.projection import ProjectionConfig
    from sample_effect.models.loading import select_parameters
    from sample_effect.scoring.effects import resolve_state
    from sample_effect.store.projection import project_examples

    fmt = data_format_from_args(args)
    update, compute = engine_configs_from_args(args)
    cfg = ProjectionConfig(args.dim, args.kind, args.seed).validate()
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise SampleEffectError(f"--out {out} exists and is not a directory")
    if not out.parent.exists():
        raise SampleEffectError(f"--out: directory {out.parent} does not exist")
    t0 = time.perf_counter()
    examples = load_examples(args.data, data_format=fmt)
    model, tokenizer = load_model_from_args(args)
    tokenized, _ = tokenize_examples(examples, tokenizer, args.max_length)
    chosen = select_parameters(model, args.params)
    state = resolve_state(model, chosen, update, args.optimizer_state)
    manifest = project_examples(model, chosen, tokenized, out, update, cfg, state, compute,
                                extra={"model": str(args.model), "data": str(args.data)})
    print(f"projected {manifest['n_examples']} examples to {cfg.dim} dims in {time.perf_counter() - t0:.1f}s; wrote {out}")
