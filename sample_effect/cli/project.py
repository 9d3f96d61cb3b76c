"""`sample-effect project`: cache random projections of per-example updates; `rank --projection` scores them."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sample_effect.errors import SampleEffectError

Common = Callable[[argparse.ArgumentParser], None]


def add_project_parser(sub: argparse._SubParsersAction, common: Common, engine_args: Common) -> None:
    """Register `project` with the same model, data and engine arguments as `rank`."""
    from sample_effect.cli.train import add_lora_args
    from sample_effect.engine.projection import KINDS

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
    p.add_argument("--dim", type=int, default=256, help="projection dimension k (default 256)")
    p.add_argument("--projection", dest="kind", default="rademacher", choices=KINDS, help="entries of P (default rademacher)")
    p.add_argument("--seed", type=int, default=0, help="seed of P (default 0)")
    engine_args(p)
    add_lora_args(p)
    common(p)
    p.set_defaults(func=cmd_project)


def cmd_project(args: argparse.Namespace) -> None:
    """Load, tokenise, project, write shards."""
    from sample_effect.cli.main import _update_from_args
    from sample_effect.cli.train import load_for_cli
    from sample_effect.data.examples import load_examples, tokenize_examples
    from sample_effect.engine.effects import resolve_state
    from sample_effect.engine.projection import ProjectionConfig, project_examples
    from sample_effect.models.loading import select_parameters

    update, compute = _update_from_args(args)
    cfg = ProjectionConfig(args.dim, args.kind, args.seed).validate()
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise SampleEffectError(f"--out {out} exists and is not a directory")
    if not out.parent.exists():
        raise SampleEffectError(f"--out: directory {out.parent} does not exist")
    t0 = time.perf_counter()
    examples = load_examples(args.data)
    model, tokenizer = load_for_cli(args)
    tokenized, _ = tokenize_examples(examples, tokenizer, args.max_length)
    chosen = select_parameters(model, args.params)
    state = resolve_state(model, chosen, update, args.optimizer_state)
    manifest = project_examples(model, chosen, tokenized, out, update, cfg, state, compute,
                                extra={"model": str(args.model), "data": str(args.data)})
    print(f"projected {manifest['n_examples']} examples to {cfg.dim} dims in {time.perf_counter() - t0:.1f}s; wrote {out}")


def projected_result(args: argparse.Namespace, model: torch.nn.Module, tokenized: Sequence[Any], target: Any, update: Any,
                     compute: Any):  # type: ignore[no-untyped-def]
    """An EffectResult estimated from a projection cache (checked to match the model, data and update)."""
    from sample_effect.engine.effects import EffectResult
    from sample_effect.engine.projection import load_projection, settings_key
    from sample_effect.models.loading import select_parameters
    from sample_effect.targets.core import resolve_target

    cache = load_projection(args.projection)
    chosen = select_parameters(model, args.params)
    if list(chosen) != cache.manifest["params"] or settings_key(model, chosen, tokenized, update, cache.config) != cache.manifest["key"]:
        raise SampleEffectError(
            f"--projection {args.projection} was made with other weights, data, parameters or update settings; "
            "pass the same --model/--data/--params/--optimizer/--lr/--clip... as to `project`"
        )
    g = resolve_target(target, model, chosen, tokenized, compute)
    effect = cache.scores(g.vector)
    return EffectResult(
        ids=cache.ids, effect=effect, loss=cache.loss, grad_norm=np.full(len(effect), np.nan),
        n_tokens=np.array([ex.n_tokens for ex in tokenized]), n_responses=np.array([ex.n_responses for ex in tokenized]),
        target=g,
    )
