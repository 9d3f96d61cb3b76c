"""CLI commands about imitation sources: `rft`, `distill`, `init-tiny`, `compare-sources`, `markers`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sample_effect.cli.options import (
    TABLE_SUFFIXES,
    SubParsers,
    add_chat_template_arg,
    add_common_args,
    add_device_arg,
    add_max_grad_norm_arg,
    add_model_args,
    add_sft_schedule_args,
    add_target_args,
    clip_from_args,
    data_format_from_args,
    load_model_from_args,
    optimizer_names,
    require_eos,
    sft_config_from_args,
)
from sample_effect.errors import SampleEffectError


def add_parsers(sub: SubParsers) -> None:
    """Register rft, distill, init-tiny, compare-sources and markers."""
    _add_rft(sub)
    _add_distill(sub)
    _add_init_tiny(sub)
    _add_compare_sources(sub)
    _add_markers(sub)


def _add_rft(sub: SubParsers) -> None:
    r = sub.add_parser("rft", help="rejection-sampling fine-tuning (STaR/RAFT/ReST) with entropy tracking",
                       description="For R rounds: sample N completions per prompt from the current policy, keep those "
                       "with reward >= --threshold, SFT on them. Logs training reward, held-out greedy accuracy, the "
                       "policy's token entropy along its own samples and the number kept; reports the entropy-collapse round.")
    add_model_args(r, lora=False)
    r.add_argument("--prompts", required=True, help='RL JSONL {"id", "prompt", "answer"} to sample on')
    r.add_argument("--eval-prompts", required=True, help="held-out RL JSONL for greedy accuracy and policy entropy")
    add_chat_template_arg(r)
    r.add_argument("--reward", default="kk", help="kk, exact, boxed or module:function")
    r.add_argument("--out", required=True, help="run directory: metrics.csv, summary.json, round-XX.jsonl, final/")
    r.add_argument("--rounds", type=int, default=3, help="sample / filter / fine-tune rounds")
    r.add_argument("--samples-per-prompt", type=int, default=4, help="completions sampled per prompt each round")
    r.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
    r.add_argument("--max-new-tokens", type=int, default=64, help="longest sampled completion")
    r.add_argument("--eval-max-new-tokens", type=int, default=64, help="greedy generation limit for held-out accuracy")
    r.add_argument("--threshold", type=float, default=1.0, help="keep completions with reward >= this (default 1.0)")
    r.add_argument("--drop-uniform", action="store_true", help="discard prompts whose samples all got the same reward")
    r.add_argument("--collapse-fraction", type=float, default=0.5, help="collapse = entropy below this x round 0's")
    r.add_argument("--entropy-samples", type=int, default=2, help="samples per held-out prompt for the entropy")
    add_sft_schedule_args(r)
    add_common_args(r)
    r.set_defaults(func=cmd_rft)


def _add_distill(sub: SubParsers) -> None:
    d = sub.add_parser("distill", help="distil a teacher into a student (off-policy SFT or on-policy reverse KL)",
                       description="Off-policy (default): the teacher samples completions on prompts (kept if the reward "
                       "accepts them unless --no-filter), written as SFT JSONL, then SFT of the student. --on-policy: "
                       "the student samples and minimises the per-token reverse KL(student || teacher) (GKD).")
    add_model_args(d, lora=False)
    d.add_argument("--teacher", required=True, help="teacher model directory (same tokenizer as --model)")
    d.add_argument("--prompts", required=True, help='RL JSONL {"id", "prompt", "answer"}')
    d.add_argument("--reward", default="kk", help="reward filter of the teacher's completions: kk, exact, boxed or module:function")
    d.add_argument("--out", required=True, help="run directory: teacher_data.jsonl (off-policy), metrics.csv, final/")
    d.add_argument("--on-policy", action="store_true", help="on-policy reverse-KL distillation instead of SFT on teacher data")
    d.add_argument("--no-filter", action="store_true", help="off-policy: keep every teacher completion (no reward filter)")
    d.add_argument("--threshold", type=float, default=1.0, help="keep teacher completions with reward >= this")
    d.add_argument("--samples-per-prompt", type=int, default=1, help="completions sampled per prompt")
    d.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
    d.add_argument("--max-new-tokens", type=int, default=64, help="longest sampled completion")
    d.add_argument("--prompts-per-step", type=int, default=4, help="--on-policy: prompts per optimiser step")
    add_chat_template_arg(d)  # auto for instruct teachers: the (shared) tokenizer's template
    add_sft_schedule_args(d)
    add_common_args(d)
    d.set_defaults(func=cmd_distill)


def _add_init_tiny(sub: SubParsers) -> None:
    t = sub.add_parser("init-tiny", help="a fresh tiny model sharing another model's tokenizer (a student for distill)",
                       description="Build a randomly initialised (seeded) tiny causal LM whose tokenizer is copied from "
                       "--tokenizer-from (a model directory, 'smollm2' or 'tiny') and whose output layer has as many "
                       "logits as that model's, and save it to --out: a student that `distill` accepts with that "
                       "model as --teacher.")
    t.add_argument("--tokenizer-from", required=True, metavar="MODEL",
                   help="'smollm2', 'tiny' or a model directory whose tokenizer (and vocabulary width) to copy")
    t.add_argument("--out", required=True, help="output model directory")
    t.add_argument("--arch", default="qwen2", help="qwen2 (default; tied embeddings), llama or gpt2")
    t.add_argument("--hidden", type=int, default=64, help="hidden size (default 64)")
    t.add_argument("--layers", type=int, default=2, help="transformer layers (default 2)")
    t.add_argument("--heads", type=int, default=4, help="attention heads (default 4; must divide --hidden)")
    t.add_argument("--max-len", type=int, default=2048, help="most positions (default 2048)")
    t.add_argument("--dtype", default="float32", help="float32, float64 or bfloat16")
    t.add_argument("--seed", type=int, default=0, help="initialisation seed")
    add_common_args(t)
    t.set_defaults(func=cmd_init_tiny)


def _add_compare_sources(sub: SubParsers) -> None:
    c = sub.add_parser("compare-sources", help="dataset effect per data source with bootstrap CIs (one table, one figure)",
                       description="Per source: mean sample effect toward the target loss (AdamW + clip 1.0 by default), "
                       "bootstrap 95%% CI, n; optionally the actual target-loss gain after --train-steps SFT steps.")
    c.add_argument("--source", action="append", required=True, metavar="NAME=FILE", help="an SFT JSONL source (repeat)")
    c.add_argument("--model", required=True, help="'tiny', 'smollm2' or a local model directory")
    c.add_argument("--dtype", default="float32", help="float32, float64 or bfloat16")
    add_device_arg(c)
    c.add_argument("--seed", type=int, default=0, help="seed of the bootstrap and of --train-steps")
    add_target_args(c, metavar=None, helps={"data": "SFT JSONL whose mean loss is the target"})
    c.add_argument("--out", required=True, help="table .csv or .parquet; the figure goes next to it as .png")
    c.add_argument("--optimizer", default="adamw", help=f"simulated optimiser: {optimizer_names()}")
    c.add_argument("--lr", type=float, default=1e-5, help="simulated (and --train-steps) learning rate")
    add_max_grad_norm_arg(c, 1.0, "per-example gradient clipping to this norm (as clip_grad_norm_)")
    c.add_argument("--max-length", type=int, default=None, help="truncate sequences to this many tokens (default: no truncation)")
    c.add_argument("--bootstrap", type=int, default=2000, help="bootstrap replicates of each source's 95%% CI")
    c.add_argument("--train-steps", type=int, default=None, help="also SFT this many steps per source and report the actual gain")
    c.add_argument("--batch-size", type=int, default=8, help="--train-steps batch size")
    add_common_args(c)
    c.set_defaults(func=cmd_compare_sources)


def _add_markers(sub: SubParsers) -> None:
    m = sub.add_parser("markers", help="marker words per 1k tokens across completion files; token banning; effects",
                       description="Frequency per 1k tokens of marker sets in JSONL completions (field response or "
                       "completion), per file; --ban-eval: greedy accuracy with and without banning the markers' tokens; "
                       "--effects: mean sample effect of examples with vs without markers.")
    m.add_argument("files", nargs="*", help="JSONL files of completions")
    m.add_argument("--markers", action="append", metavar="NAME=w1,w2", help="marker set (repeat; replaces the defaults)")
    m.add_argument("--model", help="count tokens with this model's tokenizer (else whitespace); needed by --ban-eval/--effects")
    m.add_argument("--dtype", default="float32", help="float32, float64 or bfloat16")
    add_device_arg(m)
    m.add_argument("--out", required=True, help="table .csv; a JSON summary goes next to it")
    m.add_argument("--ban-eval", action="store_true", help="greedy accuracy on --prompts with and without banning")
    m.add_argument("--prompts", help="RL JSONL for --ban-eval")
    m.add_argument("--reward", default="kk", help="--ban-eval reward: kk, exact, boxed or module:function")
    m.add_argument("--max-new-tokens", type=int, default=64, help="--ban-eval greedy generation limit")
    m.add_argument("--effects", action="store_true", help="mean sample effect with vs without markers (toward --target-data)")
    add_target_args(m, required=False, metavar=None, helps={"data": "SFT JSONL target for --effects"})
    m.add_argument("--lr", type=float, default=1e-5, help="--effects: simulated AdamW learning rate")
    add_max_grad_norm_arg(m, 1.0, "--effects: per-example gradient clipping to this norm")
    add_common_args(m)
    m.set_defaults(func=cmd_markers)


def _progress(args: argparse.Namespace) -> bool:
    return not args.quiet


def _run_dir(path: str, overwrite: bool, names: tuple[str, ...]) -> Path:
    from sample_effect.io import check_output_dir

    p = check_output_dir(path, "--out")
    if p.is_dir() and not overwrite:
        for n in names:
            if (p / n).exists():
                raise SampleEffectError(f"{p / n} already exists; pass --overwrite to replace it")
    return p


def _save_final(model, tok, out: Path) -> None:  # type: ignore[no-untyped-def]
    from sample_effect.models.loading import quiet_hf_progress

    quiet_hf_progress()
    model.save_pretrained(str(out / "final"))
    tok.save_pretrained(str(out / "final"))


def cmd_rft(args: argparse.Namespace) -> None:
    from sample_effect.io import output_dir
    from sample_effect.rollouts.prompts import chat_template_prompts, load_rl_prompts
    from sample_effect.rollouts.rewards import get_reward
    from sample_effect.training.imitation import RFTConfig, run_rft

    cfg = RFTConfig(rounds=args.rounds, samples_per_prompt=args.samples_per_prompt, temperature=args.temperature,
                    max_new_tokens=args.max_new_tokens, threshold=args.threshold, drop_uniform=args.drop_uniform,
                    collapse_fraction=args.collapse_fraction, entropy_samples=args.entropy_samples,
                    eval_max_new_tokens=args.eval_max_new_tokens, seed=args.seed, sft=sft_config_from_args(args)).validate()
    reward = get_reward(args.reward)
    prompts, evals = load_rl_prompts(args.prompts), load_rl_prompts(args.eval_prompts)
    out = _run_dir(args.out, args.overwrite, ("metrics.csv", "summary.json", "final"))
    model, tok = load_model_from_args(args)
    require_eos(tok, f"--model {args.model}")
    prompts, evals = (chat_template_prompts(x, tok, args.chat_template) for x in (prompts, evals))
    with output_dir(out):
        res = run_rft(model, tok, prompts, evals, reward, cfg, out, progress=_progress(args))
        _save_final(model, tok, out)
    f = res.metrics
    print(f"RFT {cfg.rounds} rounds: train reward {' -> '.join(f'{x:.3f}' for x in f['train_reward'])}; "
          f"eval accuracy {' -> '.join(f'{x:.3f}' for x in f['eval_accuracy'])}; entropy "
          f"{' -> '.join(f'{x:.3f}' for x in f['entropy'])}; kept {list(f['n_kept'])}; collapse round {res.collapse_round}; "
          f"wrote {out / 'metrics.csv'}, {out / 'summary.json'}, {out / 'final'}")


def cmd_distill(args: argparse.Namespace) -> None:
    from sample_effect.io import output_dir
    from sample_effect.rollouts.prompts import chat_template_prompts, load_rl_prompts
    from sample_effect.rollouts.rewards import get_reward
    from sample_effect.training import train_sft
    from sample_effect.training.imitation import (
        OnPolicyConfig,
        check_same_tokenizer,
        onpolicy_distill,
        teacher_completions,
        write_jsonl,
    )

    if args.on_policy and args.no_filter:
        raise SampleEffectError("--no-filter applies to off-policy distillation only (drop it or --on-policy)")
    sft = sft_config_from_args(args)
    oncfg = OnPolicyConfig(steps=args.steps or 20, prompts_per_step=args.prompts_per_step, samples_per_prompt=args.samples_per_prompt,
                           temperature=args.temperature, max_new_tokens=args.max_new_tokens, lr=args.lr,
                           weight_decay=args.weight_decay, max_grad_norm=args.max_grad_norm, seed=args.seed).validate()
    if args.samples_per_prompt < 1 or args.max_new_tokens < 1:
        raise SampleEffectError("--samples-per-prompt and --max-new-tokens must be >= 1")
    if not args.temperature >= 0:
        raise SampleEffectError(f"--temperature must be >= 0, got {args.temperature}")
    reward = None if args.no_filter else get_reward(args.reward)
    prompts = load_rl_prompts(args.prompts)
    out = _run_dir(args.out, args.overwrite, ("teacher_data.jsonl", "metrics.csv", "final"))
    student, stok = load_model_from_args(args)
    teacher, ttok = load_model_from_args(args, args.teacher)
    check_same_tokenizer(stok, ttok, f"--model {args.model}", f"--teacher {args.teacher}")
    require_eos(stok, f"--model {args.model}")
    prompts = chat_template_prompts(prompts, stok, args.chat_template)
    with output_dir(out):
        if args.on_policy:
            m = onpolicy_distill(student, teacher, stok, prompts, oncfg, out / "metrics.csv", progress=_progress(args))
            _save_final(student, stok, out)
            print(f"on-policy distillation, {oncfg.steps} steps: reverse KL {m['reverse_kl'].iloc[0]:.4g} -> "
                  f"{m['reverse_kl'].iloc[-1]:.4g}; wrote {out / 'metrics.csv'}, {out / 'final'}")
            return
        recs, total = teacher_completions(teacher, ttok, prompts, reward, args.samples_per_prompt, args.temperature,
                                          args.max_new_tokens, args.seed, args.threshold, progress=_progress(args))
        write_jsonl(out / "teacher_data.jsonl", recs)
        if not recs:
            raise SampleEffectError(f"the teacher produced no usable completion out of {total} (reward filter "
                                    f"'{args.reward}' >= {args.threshold}); try --no-filter or more --samples-per-prompt")
        from sample_effect.data.examples import examples_from_records, tokenize_examples

        train, _ = tokenize_examples(examples_from_records(list(enumerate(recs, 1)), str(out / "teacher_data.jsonl")), stok)
        m = train_sft(student, stok, train, sft, out, metrics_path=out / "metrics.csv", progress=_progress(args))
    print(f"off-policy distillation: kept {len(recs)}/{total} teacher completions ({'unfiltered' if args.no_filter else args.reward}); "
          f"SFT {int(m['step'].iloc[-1])} steps; wrote {out / 'teacher_data.jsonl'}, {out / 'metrics.csv'}, {out / 'final'}")


def cmd_init_tiny(args: argparse.Namespace) -> None:
    from sample_effect.io import check_output_dir
    from sample_effect.models.loading import parse_dtype
    from sample_effect.models.registry import resolve_model
    from sample_effect.models.tiny import ARCHS, init_tiny_student

    if args.arch not in ARCHS:
        raise SampleEffectError(f"--arch must be one of {', '.join(ARCHS)}, got '{args.arch}'")
    for flag, v in (("--hidden", args.hidden), ("--layers", args.layers), ("--heads", args.heads), ("--max-len", args.max_len)):
        if v < 1:
            raise SampleEffectError(f"{flag} must be >= 1, got {v}")
    if args.hidden % args.heads:
        raise SampleEffectError(f"--heads ({args.heads}) must divide --hidden ({args.hidden})")
    out = check_output_dir(args.out, "--out")
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise SampleEffectError(f"{out} exists and is not empty; pass --overwrite to write into it")
    src = resolve_model(args.tokenizer_from)
    model = init_tiny_student(src, out, arch=args.arch, hidden=args.hidden, layers=args.layers, heads=args.heads,
                              max_len=args.max_len, seed=args.seed, dtype=parse_dtype(args.dtype))
    n = sum(p.numel() for p in model.parameters())
    print(f"tiny {args.arch} model ({n:,} parameters, {model.config.vocab_size} logits per token) with the tokenizer of "
          f"{src}; wrote {out}")


def _parse_sources(specs: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for s in specs:
        name, sep, path = s.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise SampleEffectError(f"--source expects NAME=FILE, got '{s}'")
        if name in out:
            raise SampleEffectError(f"--source name '{name}' given twice")
        out[name.strip()] = path.strip()
    return out


def cmd_compare_sources(args: argparse.Namespace) -> None:
    from sample_effect.data.examples import load_examples, tokenize_examples
    from sample_effect.engine.core import ComputeConfig
    from sample_effect.io import check_output_path, write_table
    from sample_effect.plots.figures import effects_by_group
    from sample_effect.training import SFTConfig
    from sample_effect.training.common import adamw_update
    from sample_effect.training.imitation import compare_sources
    from sample_effect.update.optim import UpdateConfig

    srcs = _parse_sources(args.source)
    out = Path(args.out)
    if out.suffix.lower() not in TABLE_SUFFIXES:
        raise SampleEffectError(f"--out must end in .csv or .parquet, got '{out.name}'")
    fig = out.with_suffix(".png")
    check_output_path(out, args.overwrite)
    check_output_path(fig, args.overwrite)
    if args.train_steps is not None and args.train_steps < 1:
        raise SampleEffectError(f"--train-steps must be >= 1, got {args.train_steps}")
    update = UpdateConfig(args.optimizer.lower(), lr=args.lr, clip=clip_from_args(args, clip_zero_is_off=True)).validate()
    sft = SFTConfig(update=adamw_update(args.lr), batch_size=args.batch_size, seed=args.seed, max_steps=args.train_steps).validate() if args.train_steps else None
    fmt = data_format_from_args(args)
    raw = {n: load_examples(p, data_format=fmt) for n, p in srcs.items()}
    target_raw = load_examples(args.target_data, data_format=fmt)
    model, tok = load_model_from_args(args)
    sources = {n: tokenize_examples(ex, tok, args.max_length)[0] for n, ex in raw.items()}
    target = tokenize_examples(target_raw, tok, args.max_length)[0]
    table, per = compare_sources(model, tok, sources, target, update, ComputeConfig(progress=_progress(args)),
                                 sft, args.bootstrap, args.seed, progress=_progress(args))
    table.insert(1, "file", [srcs[n] for n in table["source"]])
    write_table(table, out)
    effects_by_group(per, "source", fig, title=f"Sample effects per source ({update.optimizer}, clip {update.clip})")
    print(table.to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    print(f"wrote {out} and {fig}")


def cmd_markers(args: argparse.Namespace) -> None:
    from sample_effect.analysis.markers import load_completions, marker_table, parse_marker_sets
    from sample_effect.io import atomic_open, check_output_path, write_table

    sets = parse_marker_sets(args.markers)
    out = Path(args.out)
    if out.suffix.lower() != ".csv":
        raise SampleEffectError(f"--out must end in .csv, got '{out.name}'")
    summary_path = out.with_suffix(".json")
    check_output_path(out, args.overwrite)
    check_output_path(summary_path, args.overwrite)
    if not args.files and not args.ban_eval:
        raise SampleEffectError("give JSONL files of completions to count markers in, or --ban-eval")
    if (args.ban_eval or args.effects) and not args.model:
        raise SampleEffectError("--ban-eval and --effects need --model")
    if args.ban_eval and not args.prompts:
        raise SampleEffectError("--ban-eval needs --prompts RL.jsonl")
    if args.effects and (not args.target_data or not args.files):
        raise SampleEffectError("--effects needs --target-data and SFT JSONL files")
    files = {f: load_completions(f) for f in args.files}
    model = tok = None
    if args.model:
        from sample_effect.models.loading import load_model
        from sample_effect.models.registry import resolve_model

        model, tok = load_model(resolve_model(args.model), args.dtype, args.device)
    table = marker_table(files, sets, tok) if files else None
    summary: dict = {"sets": sets, "tokens": "tokenizer" if tok is not None else "whitespace"}
    if table is not None:
        tot = table[table["marker"] == "*"]
        summary["per_1k"] = {f: {s: float(v) for s, v in zip(g["set"], g["per_1k"])} for f, g in tot.groupby("file", sort=False)}
    words = [w for ws in sets.values() for w in ws]
    if args.ban_eval:
        from sample_effect.analysis.markers import ban_accuracy, banned_token_ids
        from sample_effect.rollouts.prompts import load_rl_prompts
        from sample_effect.rollouts.rewards import get_reward

        reward = get_reward(args.reward)
        items = [(p.prompt, p.answer) for p in load_rl_prompts(args.prompts)]
        ban = banned_token_ids(tok, words)
        acc0, _ = ban_accuracy(model, tok, items, reward, None, args.max_new_tokens)
        acc1, _ = ban_accuracy(model, tok, items, reward, ban, args.max_new_tokens)
        summary["ban_eval"] = {"accuracy": acc0, "accuracy_banned": acc1, "banned_single_ids": sorted(ban.single),
                               "banned_sequences": [list(s) for s in ban.sequences], "prompts": len(items)}
    if args.effects:
        summary["effects"] = _marker_effects(args, model, tok, words)
    if table is not None:
        write_table(table, out)
    else:
        import pandas as pd

        write_table(pd.DataFrame(columns=["file", "set", "marker", "count", "tokens", "per_1k"]), out)
    with atomic_open(summary_path) as f:
        json.dump(summary, f, indent=2)
    if table is not None:
        print(table[table["marker"] == "*"].to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    for k in ("ban_eval", "effects"):
        if k in summary:
            print(f"{k}: " + json.dumps({a: b for a, b in summary[k].items() if not isinstance(b, list)}))
    print(f"wrote {out} and {summary_path}")


def _marker_effects(args, model, tok, words) -> dict:  # type: ignore[no-untyped-def]
    import numpy as np

    from sample_effect.analysis.markers import has_markers
    from sample_effect.data.examples import load_examples, tokenize_examples
    from sample_effect.engine.core import ComputeConfig
    from sample_effect.scoring.effects import score_examples_result
    from sample_effect.targets.core import LossTarget
    from sample_effect.training.imitation import bootstrap_mean_ci
    from sample_effect.update.optim import UpdateConfig

    fmt = data_format_from_args(args)
    exs = [e for f in args.files for e in load_examples(f, data_format=fmt)]
    ids = [e.id for e in exs]
    if len(set(ids)) != len(ids):
        raise SampleEffectError("--effects: example ids repeat across the files; give each example a unique id")
    target = LossTarget(tokenize_examples(load_examples(args.target_data, data_format=fmt), tok)[0])
    update = UpdateConfig("adamw", lr=args.lr, clip=clip_from_args(args, clip_zero_is_off=True))
    res = score_examples_result(model, tok, exs, target, update, compute=ComputeConfig(progress=not args.quiet))
    flag = np.array([any(has_markers(r, words) for r in e.responses) for e in exs])
    eff = np.asarray(res.effect, dtype=np.float64)
    out = {}
    for name, sel in (("with_markers", flag), ("without_markers", ~flag)):
        v = eff[sel]
        lo, hi = bootstrap_mean_ci(v)
        out[name] = {"n": int(v.size), "mean_effect": float(v.mean()) if v.size else float("nan"), "ci_low": lo, "ci_high": hi}
    return {k: v for k, v in out.items()} | {"update": "adamw", "clip": update.clip}
