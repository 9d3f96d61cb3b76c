"""CLI commands that train or sample: `train-sft`, `train-grpo`, `redistill`."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from sample_effect.errors import SampleEffectError

Common = Callable[[argparse.ArgumentParser], None]


def _nonneg_int(text: str) -> int:
    v = int(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {v}")
    return v


def _clip_arg(text: str) -> float | None:
    v = float(text)
    return None if v == 0 else v


def _out_dir(path: str, overwrite: bool, flag: str = "--out") -> Path:
    """Check a run directory before any compute; it is created later, by `output_dir`, once inputs are checked."""
    from sample_effect.io import check_output_dir

    p = check_output_dir(path, flag)
    if (p / "final").exists() and not overwrite:
        raise SampleEffectError(f"{p} already holds a finished run (final/); pass --overwrite to replace it")
    return p


def _require_eos(tok: object, what: str) -> None:
    """Sampling stops at EOS; without one no completion can finish and every built-in reward is 0."""
    if getattr(tok, "eos_token_id", None) is None:
        raise SampleEffectError(
            f"the tokenizer of {what} has no EOS token, so a sampled completion can never finish "
            "(rewards would only see finished=False); use a tokenizer that defines eos_token"
        )


def _model_args(p: argparse.ArgumentParser, lora: bool = True) -> None:
    p.add_argument("--model", default="tiny", help="'tiny' (default), 'smollm2', a local model or adapter directory")
    p.add_argument("--dtype", default="float32", help="float32 (default), float64 or bfloat16")
    p.add_argument("--seed", type=int, default=0)
    if lora:
        add_lora_args(p)


def add_lora_args(p: argparse.ArgumentParser) -> None:
    """--lora-r/--lora-alpha/--lora-targets: wrap the model with fresh LoRA adapters (needs peft)."""
    p.add_argument("--lora-r", type=int, default=None, help="wrap the model with LoRA adapters of this rank (needs peft)")
    p.add_argument("--lora-alpha", type=float, default=None, help="LoRA alpha (default 2 * r)")
    p.add_argument("--lora-targets", default=None, help="comma-separated module names (default: PEFT's per-architecture choice)")


def add_sft_schedule_args(p: argparse.ArgumentParser) -> None:
    """The SFT trainer's schedule (shared by train-sft, predict-sft and validate curves/selection)."""
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--schedule", default="constant", help="constant or cosine (after linear warmup)")
    p.add_argument("--warmup-steps", type=_nonneg_int, default=0)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--max-grad-norm", type=_clip_arg, default=1.0, help="clip_grad_norm_ threshold (0 = off)")
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--steps", type=int, default=None, help="optimiser steps (overrides --epochs)")
    p.add_argument("--weight-decay", type=float, default=0.0)


def sft_config_from_args(args: argparse.Namespace, **extra: object):  # type: ignore[no-untyped-def]
    """SFTConfig from add_sft_schedule_args' arguments (plus trainer-only settings), validated."""
    from sample_effect.training import SFTConfig

    return SFTConfig(
        lr=args.lr, schedule=args.schedule, warmup_steps=args.warmup_steps, batch_size=args.batch_size,
        grad_accum=args.grad_accum, max_grad_norm=args.max_grad_norm, epochs=args.epochs, max_steps=args.steps,
        seed=args.seed, weight_decay=args.weight_decay, **extra,  # type: ignore[arg-type]
    ).validate()


def add_train_parsers(sub: argparse._SubParsersAction, common: Common) -> None:
    """Register train-sft, train-grpo and redistill."""
    p = sub.add_parser("train-sft", help="supervised fine-tuning with AdamW on response tokens",
                       description="Fine-tune on SFT JSONL with the same loss the engine linearises.")
    _model_args(p)
    p.add_argument("--data", required=True, help="SFT JSONL")
    p.add_argument("--eval-data", help="SFT JSONL for eval loss; lines with an 'answer' also give greedy accuracy")
    p.add_argument("--reward", default="kk", help="reward for eval accuracy: kk, exact, boxed or module:function")
    p.add_argument("--out", required=True, help="run directory (checkpoints, metrics.csv)")
    add_sft_schedule_args(p)
    p.add_argument("--eval-every", type=_nonneg_int, default=0, help="evaluate every k steps (0 = at the end only)")
    p.add_argument("--eval-max-new-tokens", type=int, default=256)
    p.add_argument("--save-every", type=_nonneg_int, default=0)
    p.add_argument("--max-length", type=int, default=None)
    common(p)
    p.set_defaults(func=cmd_train_sft)

    g = sub.add_parser("train-grpo", help="GRPO on prompts with a reward",
                       description="GRPO with group-normalised advantages and the token-mean policy loss.")
    _model_args(g)
    g.add_argument("--prompts", required=True, help='RL JSONL: {"id", "prompt", "answer"}')
    g.add_argument("--eval-prompts", help="RL JSONL for greedy test accuracy")
    g.add_argument("--reward", default="kk")
    g.add_argument("--out", required=True)
    add_grpo_schedule_args(g)
    g.add_argument("--inner-epochs", type=int, default=1)
    g.add_argument("--kl-coef", type=float, default=0.0)
    g.add_argument("--eval-every", type=_nonneg_int, default=0)
    g.add_argument("--eval-max-new-tokens", type=int, default=256)
    g.add_argument("--save-every", type=_nonneg_int, default=0)
    common(g)
    g.set_defaults(func=cmd_train_grpo)

    r = sub.add_parser("redistill", help="sample a policy, keep correct completions as SFT data (optionally fine-tune)",
                       description="Re-distillation: sample from a checkpoint (usually after RL), keep completions the "
                       "reward accepts, write SFT JSONL, and optionally fine-tune a base model on it.")
    _model_args(r, lora=False)
    r.add_argument("--prompts", required=True, help='RL JSONL: {"id", "prompt", "answer"}')
    r.add_argument("--reward", default="kk")
    r.add_argument("--out", required=True, help="SFT JSONL to write")
    r.add_argument("--samples-per-prompt", type=int, default=1)
    r.add_argument("--keep-per-prompt", type=int, default=1)
    r.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    r.add_argument("--max-new-tokens", type=int, default=256)
    r.add_argument("--finetune", metavar="BASE", help="then fine-tune this base model on the kept data")
    r.add_argument("--finetune-out", metavar="DIR", help="run directory for --finetune")
    r.add_argument("--lr", type=float, default=1e-4)
    r.add_argument("--epochs", type=float, default=2.0)
    r.add_argument("--batch-size", type=int, default=8)
    common(r)
    r.set_defaults(func=cmd_redistill)


def add_grpo_schedule_args(p: argparse.ArgumentParser) -> None:
    """GRPO's sampling and optimiser settings (shared by train-grpo and validate rl-curves)."""
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--prompts-per-step", type=int, default=8)
    p.add_argument("--group-size", type=int, default=8)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--clip-eps", type=float, default=0.2)
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--max-grad-norm", type=_clip_arg, default=1.0, help="clip_grad_norm_ threshold (0 = off)")
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--schedule", default="constant", help="constant or cosine (after linear warmup)")
    p.add_argument("--warmup-steps", type=_nonneg_int, default=0)


def grpo_config_from_args(args: argparse.Namespace, **extra: object):  # type: ignore[no-untyped-def]
    """The validated GRPOConfig of `add_grpo_schedule_args`' options, --eval-every and --seed, plus `extra` fields."""
    from sample_effect.training import GRPOConfig

    return GRPOConfig(
        lr=args.lr, steps=args.steps, prompts_per_step=args.prompts_per_step, group_size=args.group_size,
        temperature=args.temperature, max_new_tokens=args.max_new_tokens, clip_eps=args.clip_eps,
        max_grad_norm=args.max_grad_norm, weight_decay=args.weight_decay, schedule=args.schedule,
        warmup_steps=args.warmup_steps, eval_every=args.eval_every, seed=args.seed, **extra,
    ).validate()


def load_for_cli(args: argparse.Namespace, spec: str | None = None):  # type: ignore[no-untyped-def]
    """Load --model (or `spec`), wrapped with LoRA when --lora-r is given."""
    from sample_effect.models.loading import load_model
    from sample_effect.models.registry import resolve_model

    model, tok = load_model(resolve_model(spec or args.model), args.dtype)
    if getattr(args, "lora_r", None) and spec is None:
        from sample_effect.models.lora import apply_lora

        targets = [t for t in args.lora_targets.split(",") if t] if args.lora_targets else None
        model = apply_lora(model, args.lora_r, args.lora_alpha, targets)
    return model, tok


def cmd_train_sft(args: argparse.Namespace) -> None:
    from sample_effect.data.examples import load_examples, tokenize_examples
    from sample_effect.io import output_dir
    from sample_effect.rollouts.rewards import get_reward
    from sample_effect.training import train_sft

    cfg = sft_config_from_args(args, eval_every=args.eval_every, eval_max_new_tokens=args.eval_max_new_tokens,
                               save_every=args.save_every)
    reward = get_reward(args.reward)
    train_raw = load_examples(args.data)
    eval_raw = load_examples(args.eval_data) if args.eval_data else None
    out = _out_dir(args.out, args.overwrite)
    model, tok = load_for_cli(args)
    train, _ = tokenize_examples(train_raw, tok, args.max_length)
    eval_ex = tokenize_examples(eval_raw, tok, args.max_length)[0] if eval_raw else None
    prompts = [(e.prompt, str(e.records[0]["answer"])) for e in eval_raw or [] if e.prompt is not None and "answer" in e.records[0]]
    if prompts:
        _require_eos(tok, f"--model {args.model} (greedy --eval-data accuracy)")
    with output_dir(out):
        metrics = train_sft(model, tok, train, cfg, out, eval_ex, prompts or None, reward, out / "metrics.csv", progress=not args.quiet)
    last = metrics.iloc[-1].to_dict()
    shown = ", ".join(f"{k} {last[k]:.4g}" for k in ("eval_loss", "eval_accuracy") if k in last)
    print(f"trained {int(last['step'])} steps; {shown}; wrote {out / 'final'} and {out / 'metrics.csv'}")


def cmd_train_grpo(args: argparse.Namespace) -> None:
    from sample_effect.io import output_dir
    from sample_effect.rollouts.rewards import get_reward
    from sample_effect.training import load_rl_prompts, train_grpo

    cfg = grpo_config_from_args(args, inner_epochs=args.inner_epochs, kl_coef=args.kl_coef,
                                eval_max_new_tokens=args.eval_max_new_tokens, save_every=args.save_every)
    reward = get_reward(args.reward)
    prompts = load_rl_prompts(args.prompts)
    evals = load_rl_prompts(args.eval_prompts) if args.eval_prompts else None
    out = _out_dir(args.out, args.overwrite)
    model, tok = load_for_cli(args)
    _require_eos(tok, f"--model {args.model}")
    with output_dir(out):
        m = train_grpo(model, tok, prompts, reward, cfg, out, evals, out / "metrics.csv", progress=not args.quiet)
    zero = int(m["zero_variance_groups"].fillna(0).sum())
    groups = int(m["groups"].fillna(0).sum())
    print(f"GRPO: {cfg.steps} steps, mean reward {m['reward_mean'].mean():.3f}, zero-variance groups {zero}/{groups}; "
          f"wrote {out / 'final'}, {out / 'metrics.csv'}, {out / 'replay'}")


def cmd_redistill(args: argparse.Namespace) -> None:
    from sample_effect.io import check_output_path, output_dir
    from sample_effect.rollouts.rewards import get_reward
    from sample_effect.training import load_rl_prompts, redistill

    check_output_path(args.out, args.overwrite)
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
    model, tok = load_for_cli(args)
    _require_eos(tok, f"--model {args.model}")
    recs = redistill(model, tok, prompts, reward, args.out, args.samples_per_prompt, args.keep_per_prompt,
                     args.temperature, args.max_new_tokens, args.seed, progress=not args.quiet)
    print(f"kept {len(recs)} correct completions from {len(prompts)} prompts; wrote {args.out}")
    if args.finetune:
        if not recs:
            raise SampleEffectError("no completion was accepted by the reward; nothing to fine-tune on")
        from sample_effect.data.examples import examples_from_records, tokenize_examples
        from sample_effect.training import SFTConfig, train_sft

        assert fout is not None
        base, btok = load_for_cli(args, args.finetune)
        train, _ = tokenize_examples(examples_from_records(list(enumerate(recs, 1)), args.out), btok)
        cfg = SFTConfig(lr=args.lr, epochs=args.epochs, batch_size=args.batch_size, seed=args.seed).validate()
        with output_dir(fout) as out:
            train_sft(base, btok, train, cfg, out, metrics_path=out / "metrics.csv", progress=not args.quiet)
        print(f"fine-tuned {args.finetune} on them; wrote {out / 'final'}")


def add_validate_parser(sub: argparse._SubParsersAction, common: Common) -> None:
    """`validate linearization`: predicted vs actual one-step changes over an lr sweep."""
    top = sub.add_parser("validate", help="check the predictions against real training (linearization, curves, selection)",
                         description="Three checks of the first-order picture, each writing JSON metrics, a CSV and a figure.")
    checks = top.add_subparsers(dest="check", required=True, metavar="CHECK")
    v = checks.add_parser("linearization", help="one real step per example vs lr * e(s), over an lr sweep",
                          description="For each example, one real optimiser step on it alone at each lr, the actual "
                          "drop of the target loss against lr * e(s); Pearson / Spearman per lr, CSV, JSON, PNG.")
    _model_args(v, lora=False)
    v.add_argument("--data", required=True, help="SFT JSONL of examples to step on")
    v.add_argument("--target-data", required=True, help="SFT JSONL whose mean loss is the target")
    v.add_argument("--out", required=True, help="output directory")
    v.add_argument("--lrs", default="1e-6,1e-5,1e-4,1e-3", help="comma-separated learning rates")
    v.add_argument("--optimizer", default="sgd")
    v.add_argument("--clip", type=float, default=None)
    v.add_argument("--weight-decay", type=float, default=None)
    v.add_argument("--params", default=None, metavar="REGEX")
    v.add_argument("--max-length", type=int, default=None)
    common(v)
    v.set_defaults(func=cmd_validate)
    from sample_effect.cli.growth import add_validate_curves_parser, add_validate_selection_parser

    add_validate_curves_parser(checks, common)
    add_validate_selection_parser(checks, common)
    from sample_effect.cli.rl_validate import add_validate_rl_curves_parser

    add_validate_rl_curves_parser(checks, common)


def cmd_validate(args: argparse.Namespace) -> None:
    import json
    import math

    from sample_effect.data.examples import load_examples, tokenize_examples
    from sample_effect.io import atomic_open, check_output_dir, check_output_path, output_dir
    from sample_effect.models.loading import select_parameters
    from sample_effect.update.optim import UpdateConfig
    from sample_effect.validation.linearization import linearization_check, plot_linearization

    try:
        lrs = [float(x) for x in args.lrs.split(",") if x.strip()]
    except ValueError:
        raise SampleEffectError(f"--lrs must be comma-separated numbers, got '{args.lrs}'") from None
    if not lrs or not all(math.isfinite(x) and x > 0 for x in lrs):
        raise SampleEffectError(f"--lrs must be comma-separated positive numbers, got '{args.lrs}'")
    update = UpdateConfig(args.optimizer.lower(), clip=args.clip, weight_decay=args.weight_decay).validate()
    data, target = load_examples(args.data), load_examples(args.target_data)
    out = check_output_dir(args.out)
    for name in ("linearization.csv", "linearization.json", "linearization.png") if out.is_dir() else ():
        check_output_path(out / name, args.overwrite)
    model, tok = load_for_cli(args)
    exs, _ = tokenize_examples(data, tok, args.max_length)
    tgt, _ = tokenize_examples(target, tok, args.max_length)
    params = select_parameters(model, args.params)
    from sample_effect.io import write_table

    with output_dir(out):
        res = linearization_check(model, params, exs, tgt, update, lrs)
        write_table(res.rows, out / "linearization.csv")
        with atomic_open(out / "linearization.json") as f:
            json.dump({"optimizer": update.optimizer, "clip": update.clip, "summary": res.summary.to_dict("records")}, f, indent=2)
        plot_linearization(res, str(out / "linearization.png"))
    print(res.summary.to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    print(f"wrote {out / 'linearization.csv'}, {out / 'linearization.json'}, {out / 'linearization.png'}")
