"""`sample-effect predict-rl`: the predicted per-step growth of a target under GRPO, per checkpoint.

For each --model: sample --group-size rollouts per prompt, score them with --reward, and compute
each prompt's effect of one GRPO step toward the target (`sample_effect.growth.rl`). Writes one
JSON record per model (a list, for side-by-side comparison), and optionally the prompts ranked by
RL effect and every rollout with its share of the effect.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import warnings
from pathlib import Path
from typing import Any

from sample_effect.cli.options import (
    SubParsers,
    add_chat_template_arg,
    add_chunk_size_arg,
    add_common_args,
    add_device_arg,
    add_max_grad_norm_arg,
    add_target_args,
    check_target_args,
    flag_for,
    memory_budget_from_args,
    optimizer_names,
    require_parquet,
    target_examples_from_args,
    target_from_args,
    update_config_from_args,
)
from sample_effect.errors import SampleEffectError, render_text

log = logging.getLogger("sample_effect")


def add_parsers(sub: SubParsers) -> None:
    """Register `predict-rl`."""
    p = sub.add_parser(
        "predict-rl",
        help="predict how fast GRPO grows a target from each checkpoint, and rank RL prompts by effect",
        description="From each policy checkpoint: sample rollouts per prompt, rewards, GRPO advantages; the effect "
        "of one GRPO step (the trainer's first-step loss, simulated optimiser) on each prompt toward the target; "
        "the predicted growth per step = positive effect (with a bootstrap 95% interval over prompts) + noise effect.",
    )
    p.add_argument("--model", action="append", required=True, metavar="DIR",
                   help="policy checkpoint directory (or 'tiny'); repeat to compare several side by side")
    p.add_argument("--prompts", required=True, help='RL JSONL: {"id", "prompt", "answer"}')
    add_chat_template_arg(p)
    p.add_argument("--reward", default="kk", help="kk, kk-partial, exact, boxed or module:function (default kk); also the accuracy target's")
    p.add_argument("--group-size", type=int, default=8, help="rollouts per prompt (default 8)")
    p.add_argument("--temperature", type=float, default=1.0, help="rollout sampling temperature (default 1)")
    p.add_argument("--max-new-tokens", type=int, default=256, help="longest rollout (default 256)")
    p.add_argument("--seed", type=int, default=0, help="rollout sampling seed, the same for every model (default 0)")
    p.add_argument("--prompts-per-step", type=int, default=8,
                   help="prompts per GRPO step B, for the per-step prediction (default 8, train-grpo's)")
    p.add_argument("--clip-eps", type=float, default=0.2, help="GRPO ratio clip (inactive on the first, on-policy step)")
    add_target_args(p, ("data", "direction", "prompts"), accuracy_prefix="target-",
                    helps={"data": "G = -grad of the mean SFT loss over this JSONL"})
    p.add_argument("--out", required=True, help="output JSON: a list with one record per --model")
    p.add_argument("--ranking", metavar="FILE", help="prompts ranked by RL effect per model (.csv or .parquet)")
    p.add_argument("--rollouts", metavar="FILE.jsonl", help="every rollout: reward, advantage, its share of the effect, text")
    p.add_argument("--optimizer", default="adamw",
                   help=f"simulated optimiser: {optimizer_names()} (default adamw, train-grpo's)")
    p.add_argument("--lr", type=float, default=1e-5, help="learning rate (default 1e-5, train-grpo's)")
    p.add_argument("--beta1", type=float, default=None, help="Adam beta1 (default: state file's, else 0.9)")
    p.add_argument("--beta2", type=float, default=None, help="Adam beta2 (default: state file's, else 0.999)")
    p.add_argument("--eps", type=float, default=None, help="Adam eps (default: state file's, else 1e-8)")
    p.add_argument("--weight-decay", type=float, default=None,
                   help="weight decay (default: the --optimizer-state file's, else 0, train-grpo's)")
    add_max_grad_norm_arg(p, 1.0, "gradient clipping to this norm: per prompt for the effects, per batch for the noise "
                          "term (1.0 = train-grpo's)")
    p.add_argument("--optimizer-state", nargs="+", metavar="FILE",
                   help="Adam state per --model, in the same order (e.g. RUN/checkpoint-k/optimizer.pt)")
    p.add_argument("--params", default=None, metavar="REGEX", help="score only trainable parameters whose name matches")
    p.add_argument("--dtype", default="float32", help="float32, float64 or bfloat16 (float32 accumulation)")
    add_device_arg(p)
    p.add_argument("--max-length", type=int, default=None, help="with --target-data: truncate sequences to this many tokens")
    add_chunk_size_arg(p, "sequences per compute chunk for the target gradient")
    p.add_argument("--memory-budget", default="4GB", help="memory budget, e.g. 4GB (default 4GB); the noise terms hold a few "
                   "dense vectors at a time whatever the number of prompts, and are skipped if even those exceed it")
    p.add_argument("--spill-dir", default=None, metavar="DIR",
                   help="where the noise terms write one gradient per prompt (a temporary file, deleted at the end; "
                   "default: the system's temporary directory, $TMPDIR); needs prompts x parameters x 4 bytes (float32)")
    p.add_argument("--bootstrap", type=int, default=2000, help="bootstrap replicates over prompts for the 95%% interval (default 2000)")
    p.add_argument("--no-noise", action="store_true",
                   help="skip the noise effect (Hessian-vector products; batch draws for Adam or clipping)")
    p.add_argument("--curvature-draws", type=int, default=16,
                   help="batches whose simulated step gets a Hessian-vector product for the second-order term "
                   "(loss target; 0 = off; default 16)")
    p.add_argument("--noise-draws", type=int, default=256,
                   help="batches drawn for the noise term of a non-linear update (Adam, clipping); every batch when "
                   "there are fewer (default 256)")
    add_common_args(p)
    p.set_defaults(func=cmd_predict_rl)


def _finite_or_none(obj: Any) -> Any:
    """JSON without NaN/Inf: non-finite floats become null."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_or_none(v) for v in obj]
    return obj


def _loud(message: str) -> None:
    """A WARNING line on stdout, next to the summary."""
    print(f"WARNING: {message}", flush=True)


def _check_args(args: argparse.Namespace) -> None:
    for flag, value, low in (("--group-size", args.group_size, 2), ("--max-new-tokens", args.max_new_tokens, 1),
                             ("--prompts-per-step", args.prompts_per_step, 1), ("--bootstrap", args.bootstrap, 1),
                             ("--target-samples", args.target_samples, 1),
                             ("--noise-draws", args.noise_draws, 1), ("--curvature-draws", args.curvature_draws, 0)):
        if value < low:
            raise SampleEffectError(f"{flag} must be >= {low}, got {value}")
    if args.max_length is not None and args.max_length < 1:
        raise SampleEffectError(f"--max-length must be >= 1, got {args.max_length}")
    if not (args.temperature > 0 and math.isfinite(args.temperature)):
        raise SampleEffectError(f"--temperature must be positive for GRPO rollouts, got {args.temperature}")
    check_target_args(args)
    if args.target_prompts and args.baseline == "loo" and args.target_samples < 2:
        raise SampleEffectError("--baseline loo needs --target-samples >= 2")
    if args.optimizer_state:
        from sample_effect.update.rules import get_update_rule

        if not get_update_rule(args.optimizer.lower()).needs_state:
            raise SampleEffectError("--optimizer-state holds Adam moments; use --optimizer adam or adamw with it")
        if len(args.optimizer_state) != len(args.model):
            raise SampleEffectError(
                f"--optimizer-state needs one file per --model ({len(args.model)}), got {len(args.optimizer_state)}"
            )


def _check_outputs(args: argparse.Namespace) -> None:
    from sample_effect.io import check_output_path

    out = Path(args.out)
    if out.suffix.lower() != ".json":
        raise SampleEffectError(f"--out must end in .json, got '{out.name}'")
    paths = [out]
    if args.ranking:
        r = Path(args.ranking)
        if r.suffix.lower() not in (".csv", ".parquet"):
            raise SampleEffectError(f"--ranking must end in .csv or .parquet, got '{r.name}'")
        if r.suffix.lower() == ".parquet":
            require_parquet()
        paths.append(r)
    if args.rollouts:
        if Path(args.rollouts).suffix.lower() != ".jsonl":
            raise SampleEffectError(f"--rollouts must end in .jsonl, got '{Path(args.rollouts).name}'")
        paths.append(Path(args.rollouts))
    if len({p.resolve() for p in paths}) != len(paths):
        raise SampleEffectError("--out, --ranking and --rollouts must be different files")
    for p in paths:
        check_output_path(p, args.overwrite)


def cmd_predict_rl(args: argparse.Namespace) -> None:
    """`sample-effect predict-rl`: check inputs, then per model sample, score and predict; write atomically."""
    import pandas as pd

    from sample_effect.engine.core import ComputeConfig
    from sample_effect.growth.rl import predict_rl
    from sample_effect.growth.rl_warnings import RLPredictionWarning, prompts_per_step_warning
    from sample_effect.io import atomic_open, write_table
    from sample_effect.models.loading import load_model, select_parameters
    from sample_effect.models.registry import resolve_model
    from sample_effect.rollouts.prompts import chat_template_prompts, load_rl_prompts
    from sample_effect.rollouts.rewards import get_reward
    from sample_effect.scoring.effects import resolve_state

    _check_args(args)
    _check_outputs(args)
    update = update_config_from_args(args)
    compute = ComputeConfig(batch_size=args.chunk_size, memory_budget=memory_budget_from_args(args), progress=not args.quiet)
    reward = get_reward(args.reward)
    prompts = load_rl_prompts(args.prompts)
    if not prompts:
        raise SampleEffectError(f"{args.prompts} holds no prompts")
    target_raw = target_examples_from_args(args)
    if args.target_prompts and not load_rl_prompts(args.target_prompts):
        raise SampleEffectError(f"{args.target_prompts} holds no prompts")

    from sample_effect.runtime import distributed as dist

    rank0 = not dist.is_distributed() or dist.rank() == 0  # under torchrun, rank 0 alone reports and writes
    clamp = prompts_per_step_warning(args.prompts_per_step, len(prompts))
    early = render_text(clamp, flag_for) if clamp else None  # the library's text, with flags for fields
    if early and rank0:  # said before the sampling, which can take minutes
        _loud(early)
    records: list[dict[str, Any]] = []
    tables = []
    rollout_rows: list[dict[str, Any]] = []
    for i, spec in enumerate(args.model):
        model, tok = load_model(resolve_model(spec), args.dtype, args.device)
        if getattr(tok, "eos_token_id", None) is None:
            raise SampleEffectError(f"the tokenizer of --model {spec} has no EOS token, so no rollout can finish")
        params = select_parameters(model, args.params)
        target = target_from_args(args, tok, target_raw, accuracy_prefix="target-")
        state = resolve_state(model, params, update, args.optimizer_state[i] if args.optimizer_state else None)
        with warnings.catch_warnings():  # printed below, as WARNING lines next to the summary
            warnings.simplefilter("ignore", RLPredictionWarning)
            pred = predict_rl(
                model, tok, chat_template_prompts(prompts, tok, args.chat_template), reward, target, update, group_size=args.group_size, temperature=args.temperature,
                max_new_tokens=args.max_new_tokens, seed=args.seed, prompts_per_step=args.prompts_per_step,
                clip_eps=args.clip_eps, params=params, state=state, compute=compute, noise=not args.no_noise,
                n_boot=args.bootstrap, noise_draws=args.noise_draws, curvature_draws=args.curvature_draws,
                spill_dir=args.spill_dir,
            )
        if not rank0:
            continue
        growth = pred.growth
        rendered = [render_text(m, flag_for) for m in growth.warnings]  # with flags, not fields
        records.append({"model": str(spec), **growth.to_dict(), "warnings": rendered})
        table = pred.ranking()
        table.insert(0, "model", str(spec))
        tables.append(table)
        rollout_rows += [{"model": str(spec), **r} for r in pred.rollout_rows()]
        lo, hi = growth.positive_effect_ci95
        noise = "n/a" if growth.noise_effect is None else f"{growth.noise_effect:.4g}"
        if growth.growth_rate_second_order is not None:
            noise += f"; with the second-order term {growth.growth_rate_second_order:.4g}"
        print(
            f"{spec}: growth {growth.growth_rate:.4g} per step toward '{growth.target}' (positive {growth.positive_effect:.4g}, "
            f"95% CI [{lo:.4g}, {hi:.4g}]; noise {noise}); zero-variance groups {growth.zero_variance_groups}/{growth.n_prompts}"
        )
        for message in rendered:
            if message != early:
                _loud(f"{spec}: {message}")
    if not rank0:
        return
    with atomic_open(args.out) as f:
        json.dump(_finite_or_none(records), f, indent=2, allow_nan=False)
        f.write("\n")
    written = [args.out]
    if args.ranking:
        write_table(pd.concat(tables, ignore_index=True), args.ranking)
        written.append(args.ranking)
    if args.rollouts:
        with atomic_open(args.rollouts) as f:
            for row in rollout_rows:
                f.write(json.dumps(_finite_or_none(row), ensure_ascii=False) + "\n")
        written.append(args.rollouts)
    print(f"wrote {', '.join(written)}")
