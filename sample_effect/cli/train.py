"""CLI commands that train or sample (`train-sft`, `train-grpo`, `redistill`), and `validate linearization`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sample_effect.cli.options import (
    SubParsers,
    add_chat_template_arg,
    add_common_args,
    add_data_format_args,
    add_grpo_schedule_args,
    add_max_grad_norm_arg,
    add_model_args,
    add_sft_schedule_args,
    add_target_args,
    clip_from_args,
    data_format_from_args,
    grpo_config_from_args,
    load_model_from_args,
    nonneg_int,
    optimizer_names,
    require_eos,
    sft_config_from_args,
)
from sample_effect.errors import SampleEffectError


def _out_dir(path: str, overwrite: bool, flag: str = "--out") -> Path:
    """Check a run directory before any compute; it is created later, by `output_dir`, once inputs are checked."""
    from sample_effect.io import check_output_dir

    p = check_output_dir(path, flag)
    if (p / "final").exists() and not overwrite:
        raise SampleEffectError(f"{p} already holds a finished run (final/); pass --overwrite to replace it")
    return p


def add_parsers(sub: SubParsers) -> None:
    """Register train-sft, train-grpo and redistill."""
    _add_train_sft(sub)
    _add_train_grpo(sub)
    _add_redistill(sub)


def _add_train_sft(sub: SubParsers) -> None:
    p = sub.add_parser("train-sft", help="supervised fine-tuning with AdamW on response tokens",
                       description="Fine-tune on SFT JSONL with the same loss the engine linearises.")
    add_model_args(p)
    p.add_argument("--data", required=True, help="SFT JSONL (or .parquet, or a saved `datasets` directory)")
    p.add_argument("--eval-data", help="SFT JSONL for eval loss; lines with an 'answer' also give greedy accuracy "
                   "(default: no evaluation)")
    p.add_argument("--reward", default="kk", help="reward for eval accuracy: kk, exact, boxed or module:function")
    p.add_argument("--out", required=True, help="run directory (checkpoints, metrics.csv)")
    add_sft_schedule_args(p)
    p.add_argument("--eval-every", type=nonneg_int, default=0, help="evaluate every k steps (0 = at the end only)")
    p.add_argument("--eval-max-new-tokens", type=int, default=256, help="greedy generation limit for eval accuracy")
    p.add_argument("--save-every", type=nonneg_int, default=0, help="save a checkpoint every k steps (0 = final only)")
    p.add_argument("--max-length", type=int, default=None, help="truncate sequences to this many tokens (default: no truncation)")
    add_common_args(p)
    add_data_format_args(p)
    p.set_defaults(func=cmd_train_sft)


def _add_train_grpo(sub: SubParsers) -> None:
    g = sub.add_parser("train-grpo", help="GRPO on prompts with a reward",
                       description="GRPO with group-normalised advantages and the token-mean policy loss.")
    add_model_args(g)
    g.add_argument("--prompts", required=True, help='RL JSONL: {"id", "prompt", "answer"}')
    add_chat_template_arg(g)
    g.add_argument("--eval-prompts", help="RL JSONL for greedy test accuracy (default: no evaluation)")
    g.add_argument("--reward", default="kk", help="kk, kk-partial, exact, boxed or module:function")
    g.add_argument("--out", required=True, help="run directory (checkpoints, metrics.csv, replay/)")
    add_grpo_schedule_args(g)
    g.add_argument("--inner-epochs", type=int, default=1, help="optimiser passes over each step's rollouts")
    g.add_argument("--kl-coef", type=float, default=0.0, help="weight of the k3 KL to the starting model")
    g.add_argument("--eval-every", type=nonneg_int, default=0, help="evaluate every k steps (0 = at the end only)")
    g.add_argument("--eval-max-new-tokens", type=int, default=256, help="greedy generation limit for eval accuracy")
    g.add_argument("--save-every", type=nonneg_int, default=0, help="save a checkpoint every k steps (0 = final only)")
    add_common_args(g)
    g.set_defaults(func=cmd_train_grpo)


def _add_redistill(sub: SubParsers) -> None:
    r = sub.add_parser("redistill", help="sample a policy, keep correct completions as SFT data (optionally fine-tune)",
                       description="Re-distillation: sample from a checkpoint (usually after RL), keep completions the "
                       "reward accepts, write SFT JSONL, and optionally fine-tune a base model on it.")
    add_model_args(r, lora=False)
    r.add_argument("--prompts", required=True, help='RL JSONL: {"id", "prompt", "answer"}')
    add_chat_template_arg(r)
    r.add_argument("--reward", default="kk", help="kk, kk-partial, exact, boxed or module:function")
    r.add_argument("--out", required=True, help="SFT JSONL to write")
    r.add_argument("--samples-per-prompt", type=int, default=1, help="completions sampled per prompt")
    r.add_argument("--keep-per-prompt", type=int, default=1, help="most accepted completions kept per prompt")
    r.add_argument("--temperature", type=float, default=0.0, help="sampling temperature; 0 = greedy (default)")
    r.add_argument("--max-new-tokens", type=int, default=256, help="longest completion")
    r.add_argument("--stats", metavar="FILE.json", help="also write the sample counts and the acceptance rate (the "
                   "policy's mean reward over every sample) to this JSON file")
    r.add_argument("--finetune", metavar="BASE", help="then fine-tune this base model on the kept data (default: no fine-tuning)")
    r.add_argument("--finetune-out", metavar="DIR", help="run directory for --finetune")
    r.add_argument("--lr", type=float, default=1e-4, help="--finetune learning rate")
    r.add_argument("--epochs", type=float, default=2.0, help="--finetune epochs")
    r.add_argument("--batch-size", type=int, default=8, help="--finetune training batch")
    add_common_args(r)
    r.set_defaults(func=cmd_redistill)


def cmd_train_sft(args: argparse.Namespace) -> None:
    """`sample-effect train-sft`: load, fine-tune, write the run directory."""
    from sample_effect.data.examples import load_examples, tokenize_examples
    from sample_effect.io import output_dir
    from sample_effect.rollouts.rewards import get_reward
    from sample_effect.training import train_sft

    fmt = data_format_from_args(args)
    cfg = sft_config_from_args(args, eval_every=args.eval_every, eval_max_new_tokens=args.eval_max_new_tokens,
                               save_every=args.save_every)
    reward = get_reward(args.reward)
    train_raw = load_examples(args.data, data_format=fmt)
    eval_raw = load_examples(args.eval_data, data_format=fmt) if args.eval_data else None
    out = _out_dir(args.out, args.overwrite)
    model, tok = load_model_from_args(args)
    train, _ = tokenize_examples(train_raw, tok, args.max_length)
    eval_ex = tokenize_examples(eval_raw, tok, args.max_length)[0] if eval_raw else None
    prompts = [(e.prompt, str(e.records[0]["answer"])) for e in eval_raw or [] if e.prompt is not None and "answer" in e.records[0]]
    if prompts:
        require_eos(tok, f"--model {args.model} (greedy --eval-data accuracy)")
    with output_dir(out):
        metrics = train_sft(model, tok, train, cfg, out, eval_ex, prompts or None, reward, out / "metrics.csv", progress=not args.quiet)
    last = metrics.iloc[-1].to_dict()
    shown = "".join(f"{k} {last[k]:.4g}; " for k in ("eval_loss", "eval_accuracy") if k in last)
    print(f"trained {int(last['step'])} steps; {shown}wrote {out / 'final'} and {out / 'metrics.csv'}")


def cmd_train_grpo(args: argparse.Namespace) -> None:
    """`sample-effect train-grpo`: load, run GRPO, write the run directory."""
    from sample_effect.io import output_dir
    from sample_effect.rollouts.prompts import chat_template_prompts, load_rl_prompts
    from sample_effect.rollouts.rewards import get_reward
    from sample_effect.training import GRPOHooks, train_grpo

    cfg = grpo_config_from_args(args, inner_epochs=args.inner_epochs, kl_coef=args.kl_coef,
                                eval_max_new_tokens=args.eval_max_new_tokens, save_every=args.save_every)
    reward = get_reward(args.reward)
    prompts = load_rl_prompts(args.prompts)
    evals = load_rl_prompts(args.eval_prompts) if args.eval_prompts else None
    out = _out_dir(args.out, args.overwrite)
    model, tok = load_model_from_args(args)
    require_eos(tok, f"--model {args.model}")
    prompts = chat_template_prompts(prompts, tok, args.chat_template)
    evals = chat_template_prompts(evals, tok, args.chat_template) if evals else None
    with output_dir(out):
        m = train_grpo(model, tok, prompts, reward, cfg, out, out / "metrics.csv", hooks=GRPOHooks(eval_prompts=evals),
                       progress=not args.quiet)
    zero = int(m["zero_variance_groups"].fillna(0).sum())
    groups = int(m["groups"].fillna(0).sum())
    print(f"GRPO: {cfg.steps} steps, mean reward {m['reward_mean'].mean():.3f}, zero-variance groups {zero}/{groups}; "
          f"wrote {out / 'final'}, {out / 'metrics.csv'}, {out / 'replay'}")


def cmd_redistill(args: argparse.Namespace) -> None:
    """`sample-effect redistill`: sample, keep what the reward accepts, optionally fine-tune on it."""
    from sample_effect.io import check_output_path, output_dir
    from sample_effect.rollouts.prompts import chat_template_prompts, load_rl_prompts
    from sample_effect.rollouts.rewards import get_reward
    from sample_effect.training import RedistillConfig, redistill

    check_output_path(args.out, args.overwrite)
    if args.stats:
        check_output_path(args.stats, args.overwrite)
    if args.finetune and not args.finetune_out:
        raise SampleEffectError("--finetune needs --finetune-out DIR")
    for flag, value in (("--samples-per-prompt", args.samples_per_prompt), ("--keep-per-prompt", args.keep_per_prompt),
                        ("--max-new-tokens", args.max_new_tokens)):
        if value < 1:
            raise SampleEffectError(f"{flag} must be >= 1, got {value}")
    if not args.temperature >= 0:
        raise SampleEffectError(f"--temperature must be >= 0 (0 = greedy), got {args.temperature}")
    fout = _out_dir(args.finetune_out, args.overwrite, "--finetune-out") if args.finetune else None
    reward = get_reward(args.reward)
    prompts = load_rl_prompts(args.prompts)
    model, tok = load_model_from_args(args)
    require_eos(tok, f"--model {args.model}")
    prompts = chat_template_prompts(prompts, tok, args.chat_template)
    stats: dict = {}
    cfg = RedistillConfig(args.samples_per_prompt, args.keep_per_prompt, args.temperature, args.max_new_tokens, args.seed)
    recs = redistill(model, tok, prompts, reward, args.out, cfg, progress=not args.quiet, stats=stats)
    wrote = args.out
    if args.stats:
        from sample_effect.io import atomic_open

        with atomic_open(args.stats) as f:
            json.dump({**stats, "model": args.model, "temperature": args.temperature, "seed": args.seed}, f, indent=1)
        wrote += f" and {args.stats}"
    print(f"kept {len(recs)} correct completions from {len(prompts)} prompts ({stats['accepted']} of "
          f"{stats['samples']} samples accepted, {stats['accept_rate']:.3f}); wrote {wrote}")
    if args.finetune:
        if not recs:
            raise SampleEffectError("no completion was accepted by the reward; nothing to fine-tune on")
        from sample_effect.data.examples import examples_from_records, tokenize_examples
        from sample_effect.training import SFTConfig, train_sft
        from sample_effect.training.common import adamw_update

        assert fout is not None
        base, btok = load_model_from_args(args, args.finetune)
        train, _ = tokenize_examples(examples_from_records(list(enumerate(recs, 1)), args.out), btok)
        cfg = SFTConfig(update=adamw_update(args.lr), epochs=args.epochs, batch_size=args.batch_size, seed=args.seed).validate()
        with output_dir(fout) as out:
            train_sft(base, btok, train, cfg, out, metrics_path=out / "metrics.csv", progress=not args.quiet)
        print(f"fine-tuned {args.finetune} on them; wrote {out / 'final'}")


def add_validate_parsers(checks: SubParsers) -> None:
    """Register `validate linearization`: predicted vs actual one-step changes over an lr sweep."""
    v = checks.add_parser("linearization", help="one real step per example vs lr * e(s), over an lr sweep",
                          description="For each example, one real optimiser step on it alone at each lr, the actual "
                          "drop of the target loss against lr * e(s); Pearson / Spearman per lr, CSV, JSON, PNG.")
    add_model_args(v, lora=False)
    v.add_argument("--data", required=True, help="SFT JSONL of examples to step on")
    add_target_args(v, metavar=None, helps={"data": "SFT JSONL whose mean loss is the target"})
    v.add_argument("--out", required=True, help="output directory")
    v.add_argument("--lrs", default="1e-6,1e-5,1e-4,1e-3", help="comma-separated learning rates")
    v.add_argument("--optimizer", default="sgd", help=f"optimiser of the real and simulated step: {optimizer_names()}")
    add_max_grad_norm_arg(v, None, "per-example gradient clipping to this norm (as clip_grad_norm_)")
    v.add_argument("--weight-decay", type=float, default=None, help="weight decay (default: torch's for --optimizer)")
    v.add_argument("--params", default=None, metavar="REGEX", help="step only parameters whose name matches (default: all)")
    v.add_argument("--max-length", type=int, default=None, help="truncate sequences to this many tokens (default: no truncation)")
    add_common_args(v)
    add_data_format_args(v)
    v.set_defaults(func=cmd_validate)


def cmd_validate(args: argparse.Namespace) -> None:
    """`sample-effect validate linearization`: real one-step changes against lr * e(s)."""
    import json
    import math

    from sample_effect.data.examples import load_examples, tokenize_examples
    from sample_effect.io import atomic_open, check_output_dir, check_output_path, output_dir
    from sample_effect.models.loading import select_parameters
    from sample_effect.update.optim import UpdateConfig
    from sample_effect.validation.linearization import linearization_check, plot_linearization

    fmt = data_format_from_args(args)
    try:
        lrs = [float(x) for x in args.lrs.split(",") if x.strip()]
    except ValueError:
        raise SampleEffectError(f"--lrs must be comma-separated numbers, got '{args.lrs}'") from None
    if not lrs or not all(math.isfinite(x) and x > 0 for x in lrs):
        raise SampleEffectError(f"--lrs must be comma-separated positive numbers, got '{args.lrs}'")
    update = UpdateConfig(args.optimizer.lower(), clip=clip_from_args(args), weight_decay=args.weight_decay).validate()
    data, target = load_examples(args.data, data_format=fmt), load_examples(args.target_data, data_format=fmt)
    out = check_output_dir(args.out, "--out")
    for name in ("linearization.csv", "linearization.json", "linearization.png") if out.is_dir() else ():
        check_output_path(out / name, args.overwrite)
    model, tok = load_model_from_args(args)
    exs, _ = tokenize_examples(data, tok, args.max_length)
    tgt, _ = tokenize_examples(target, tok, args.max_length)
    params = select_parameters(model, args.params)
    from sample_effect.io import write_table

    with output_dir(out):
        res = linearization_check(model, params, exs, tgt, update, lrs, progress=not args.quiet)
        write_table(res.rows, out / "linearization.csv")
        with atomic_open(out / "linearization.json") as f:
            json.dump({"optimizer": update.optimizer, "clip": update.clip, "summary": res.summary.to_dict("records")}, f, indent=2)
        plot_linearization(res, str(out / "linearization.png"))
    print(res.summary.to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    print(f"wrote {out / 'linearization.csv'}, {out / 'linearization.json'}, {out / 'linearization.png'}")
