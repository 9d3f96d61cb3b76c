"""Command line: `sample-effect <command>`. It only parses arguments, builds settings and calls the library.

Every expected failure is a SampleEffectError, printed as one line (no traceback unless
--debug) with a non-zero exit; outputs are checked before any compute and written atomically.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sample_effect.errors import SampleEffectError
from sample_effect.io import write_table

log = logging.getLogger("sample_effect")

TABLE_SUFFIXES = (".csv", ".parquet")


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got '{text}'") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    p.add_argument("--quiet", action="store_true", help="no progress bars, warnings only")
    p.add_argument("--overwrite", action="store_true", help="replace output files that already exist")
    p.add_argument("--log-level", default="warning", type=str.lower, choices=["debug", "info", "warning", "error"],
                   help="sample-effect's own log messages on stderr (default warning)")


def _add_engine_args(p: argparse.ArgumentParser) -> None:
    """Arguments shared by every command that simulates optimiser steps on examples (rank, project)."""
    p.add_argument("--optimizer", default="sgd", help="simulated optimiser: sgd, adam or adamw (default sgd)")
    p.add_argument("--lr", type=float, default=1e-5, help="learning rate (effects are per unit lr; default 1e-5)")
    p.add_argument("--beta1", type=float, default=None, help="Adam beta1 (default: state file's, else 0.9)")
    p.add_argument("--beta2", type=float, default=None, help="Adam beta2 (default: state file's, else 0.999)")
    p.add_argument("--eps", type=float, default=None, help="Adam eps (default: state file's, else 1e-8)")
    p.add_argument("--weight-decay", type=float, default=None, help="weight decay (default: state file's, else torch's: 0.01 for adamw, 0 otherwise)")
    p.add_argument("--optimizer-state", metavar="FILE|DIR",
                   help="torch.save of {'optimizer': opt.state_dict(), 'param_names': [...]}, or a transformers Trainer "
                   "checkpoint directory (its optimizer.pt)")
    p.add_argument("--clip", type=float, default=None, help="per-example gradient clipping to this norm (as clip_grad_norm_)")
    p.add_argument("--params", default=None, metavar="REGEX", help="score only trainable parameters whose name matches")
    p.add_argument("--dtype", default="float32", help="float32, float64 or bfloat16 (float32 accumulation)")
    p.add_argument("--max-length", type=_positive_int, default=None, help="truncate sequences from the right to this many tokens")
    p.add_argument("--batch-size", type=_positive_int, default=16, help="most sequences per vmap chunk (speed/memory only)")
    p.add_argument("--memory-budget", default="4GB", help="memory budget for one chunk, e.g. 4GB (default 4GB)")
    p.add_argument("--method", default="auto", choices=["auto", "ghost", "vmap", "jvp"],
                   help="engine path (same numbers, different speed): auto/ghost (per-layer factors from one batched "
                   "backward; default), vmap (reference), jvp (forward-mode; SGD without --clip only)")
    p.add_argument("--grad-norms", action="store_true",
                   help="fill the grad_norm column even when nothing needs it (SGD without --clip on the fast paths)")
    p.add_argument("--explain", action="store_true",
                   help="print the engine's plan (per-layer path, chunk size, expected peak memory) and exit")


def update_config_from_args(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """The simulated update (--optimizer/--lr/--beta1/--beta2/--eps/--weight-decay/--clip), validated."""
    from sample_effect.update.optim import UpdateConfig

    update = UpdateConfig(
        optimizer=args.optimizer.lower(), lr=args.lr, beta1=args.beta1, beta2=args.beta2, eps=args.eps,
        weight_decay=args.weight_decay, clip=args.clip,
    ).validate()
    if args.optimizer_state and update.optimizer == "sgd":
        raise SampleEffectError("--optimizer-state holds Adam moments; use --optimizer adam or adamw with it")
    return update


def memory_budget_from_args(args: argparse.Namespace) -> int | None:
    """--memory-budget in bytes, with the flag named in the error."""
    from sample_effect.engine.core import parse_bytes

    try:
        return parse_bytes(args.memory_budget)
    except SampleEffectError as exc:
        raise SampleEffectError(f"--memory-budget: {exc}") from None


def target_from_args(args: argparse.Namespace, tokenizer: Any, target_raw: Any, accuracy_prefix: str | None = ""):  # type: ignore[no-untyped-def]
    """The target a command's flags name: --target-data (already loaded as `target_raw`), --direction,
    or --target-prompts (when `accuracy_prefix` is not None); None if none of them is given."""
    from sample_effect.data.examples import tokenize_examples
    from sample_effect.targets.core import DirectionTarget, LossTarget

    if target_raw is not None:
        tokenized, report = tokenize_examples(target_raw, tokenizer, args.max_length)
        if report.n_truncated:
            log.warning("%d sequence(s) of --target-data truncated to --max-length %d", report.n_truncated, args.max_length)
        return LossTarget(tokenized)
    if getattr(args, "direction", None):
        return DirectionTarget(args.direction[0], args.direction[1], normalize=getattr(args, "normalize", False))
    if accuracy_prefix is not None and getattr(args, "target_prompts", None):
        from sample_effect.cli.predict_rl import accuracy_target_from_args

        return accuracy_target_from_args(args, tokenizer, prefix=accuracy_prefix)
    return None


def _update_from_args(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """UpdateConfig and ComputeConfig from the shared engine arguments, validated."""
    from sample_effect.engine.core import ComputeConfig

    update = update_config_from_args(args)
    budget = memory_budget_from_args(args)
    compute = ComputeConfig(batch_size=args.batch_size, memory_budget=budget, progress=not args.quiet, method=args.method,
                            grad_norms=args.grad_norms)
    if args.method == "jvp" and (update.optimizer != "sgd" or update.clip is not None):
        raise SampleEffectError("--method jvp computes SGD effects without --clip only")
    return update, compute


def _add_rank(sub: argparse._SubParsersAction) -> None:
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
    from sample_effect.cli.predict_rl import add_accuracy_target_args

    add_accuracy_target_args(p)
    p.add_argument("--out", required=True, help="output table, .csv or .parquet")
    _add_engine_args(p)
    p.add_argument("--projection", metavar="DIR",
                   help="score from a cache written by `sample-effect project` (estimate <P d, P G>; no gradients recomputed)")
    p.add_argument("--top-k", type=_positive_int, default=None, help="with --export: how many top examples to export")
    from sample_effect.cli.train import add_lora_args

    add_lora_args(p)
    p.add_argument("--export", metavar="FILE.jsonl", help="write the top-k examples in the input's own format")
    from sample_effect.store.cache import add_cache_args

    add_cache_args(p)  # --cache-dir, --resume, --shard-size
    _common(p)
    p.set_defaults(func=cmd_rank)


def _add_kk(sub: argparse._SubParsersAction) -> None:
    from sample_effect.data.kk import STYLES

    p = sub.add_parser(
        "kk",
        help="generate Knights-and-Knaves puzzles as SFT JSONL",
        description="Generate Knights-and-Knaves puzzles with exactly one solution, written as JSONL lines "
        "with SFT fields (id, prompt, response) plus answer, names, statements, solution.",
    )
    p.add_argument("--people", type=int, required=True, help="people per puzzle, 2..8")
    p.add_argument("--n", type=_positive_int, required=True, help="number of puzzles")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--style", default="short-cot", choices=STYLES, help="response style (default short-cot)")
    p.add_argument("--id-prefix", default="kk", help="prefix of each id (default kk)")
    p.add_argument("--out", required=True, help="output JSONL file")
    _common(p)
    p.set_defaults(func=cmd_kk)


def cmd_kk(args: argparse.Namespace) -> None:
    """`sample-effect kk`: generate puzzles."""
    from sample_effect.data.kk import write_kk
    from sample_effect.io import check_output_path

    check_output_path(args.out, args.overwrite)
    recs = write_kk(args.out, args.people, args.n, args.seed, args.style, args.id_prefix)
    print(f"wrote {len(recs)} {args.people}-person puzzles ({args.style}) to {args.out}")


def cmd_rank(args: argparse.Namespace) -> None:
    """`sample-effect rank`: load, score, rank, write."""
    from sample_effect.cli.train import load_for_cli
    from sample_effect.data.examples import load_examples, tokenize_examples
    from sample_effect.engine.effects import score_examples_result
    from sample_effect.io import check_output_path
    from sample_effect.targets.core import SelfTarget

    out = Path(args.out)
    if out.suffix.lower() not in TABLE_SUFFIXES:
        raise SampleEffectError(f"--out must end in .csv or .parquet, got '{out.name}'")
    if out.suffix.lower() == ".parquet":
        _require_parquet()
    if (args.export is None) != (args.top_k is None):
        raise SampleEffectError("--top-k and --export go together")
    if args.normalize and not args.direction:
        raise SampleEffectError("--normalize only applies to --direction")
    check_output_path(out, args.overwrite)
    if args.export:
        check_output_path(args.export, args.overwrite)
        if Path(args.export).resolve() == out.resolve():
            raise SampleEffectError("--export and --out must be different files")
    update, compute = _update_from_args(args)

    t0 = time.perf_counter()
    examples = load_examples(args.data)
    target_examples = load_examples(args.target_data) if args.target_data else None
    model, tokenizer = load_for_cli(args)
    tokenized, report = tokenize_examples(examples, tokenizer, args.max_length)
    if report.n_truncated:
        log.warning("%d sequence(s) of --data truncated to --max-length %d", report.n_truncated, args.max_length)
    target = target_from_args(args, tokenizer, target_examples) or SelfTarget()
    if args.explain:
        from sample_effect.engine.planner import make_plan
        from sample_effect.models.loading import select_parameters

        print(make_plan(model, select_parameters(model, args.params), tokenized, update, compute).render())
        return
    from sample_effect.runtime.distributed import is_distributed

    if args.projection and (args.cache_dir or is_distributed()):
        raise SampleEffectError("--projection scores a finished projection cache; it takes no --cache-dir or torchrun")
    if args.projection:
        from sample_effect.cli.project import projected_result

        result = projected_result(args, model, tokenized, target, update, compute)
    elif args.cache_dir or args.resume or is_distributed():
        from sample_effect.store.cache import score_rank

        ranked = score_rank(model, tokenized, target, update, params=args.params, optimizer_state=args.optimizer_state,
                            compute=compute, cache_dir=args.cache_dir, shard_size=args.shard_size, resume=args.resume)
        if ranked is None:  # a torchrun rank other than 0: rank 0 writes the output
            return
        result = ranked
    else:
        result = score_examples_result(
            model, tokenizer, tokenized, target, update, params=args.params, optimizer_state=args.optimizer_state,
            compute=compute,
        )
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


def _require_parquet() -> None:
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise SampleEffectError("writing .parquet needs pyarrow: pip install 'sample-effect[parquet]'") from None


def build_parser() -> argparse.ArgumentParser:
    """The full `sample-effect` argument parser (also used to generate the CLI reference)."""
    parser = argparse.ArgumentParser(
        prog="sample-effect",
        description="Which fine-tuning examples will move your model, and how fast training will improve it.",
    )
    from sample_effect import __version__

    parser.add_argument("--version", action="version", version=f"sample-effect {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_rank(sub)
    _add_kk(sub)
    from sample_effect.cli.demo import add_demo_parser
    from sample_effect.cli.predict_rl import add_predict_rl_parser
    from sample_effect.cli.train import add_train_parsers, add_validate_parser

    add_train_parsers(sub, _common)
    add_validate_parser(sub, _common)
    add_demo_parser(sub, _common)
    add_predict_rl_parser(sub, _common)
    from sample_effect.cli.growth import add_predict_sft_parser
    from sample_effect.cli.project import add_project_parser

    add_predict_sft_parser(sub, _common)

    add_project_parser(sub, _common, _add_engine_args)
    from sample_effect.cli.plot import add_plot_parser
    add_plot_parser(sub, _common)
    from sample_effect.cli.imitation import add_imitation_parsers
    add_imitation_parsers(sub, _common)
    from sample_effect.data.sources import add_data_format_args_everywhere

    add_data_format_args_everywhere(parser)  # --split/--id-field/... wherever there is a --data
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `sample-effect` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    logging.basicConfig(format="sample-effect: %(levelname)s: %(message)s", level=logging.WARNING, stream=sys.stderr)
    log.setLevel(getattr(logging, str(getattr(args, "log_level", "warning")).upper()))
    for noisy in ("transformers", "torch"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    _quiet_transformers()
    func: Callable[[argparse.Namespace], None] = args.func
    try:
        from sample_effect.data.sources import data_format_options, format_from_args

        with data_format_options(format_from_args(args)):
            func(args)
    except SampleEffectError as exc:
        if args.debug:
            raise
        # One line whatever the message holds (a reward's or a loader's exception text may span lines).
        print("sample-effect: error: " + " ".join(x.strip() for x in str(exc).splitlines() if x.strip()), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sample-effect: interrupted", file=sys.stderr)
        return 130
    return 0


def _quiet_transformers() -> None:
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except Exception:  # pragma: no cover - transformers missing is reported elsewhere
        pass


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
