"""Command line: `sample-effect <command>`. It only parses arguments, builds settings and calls the library.

`build_parser` asks each command module to register its commands (`add_parsers(sub)`); command modules
share options through `sample_effect.cli.options` and never import each other. Every expected failure is
a SampleEffectError, printed as one line (no traceback unless --debug) with exit status 2; usage errors
are one line too; outputs are checked before any compute and written atomically.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from sample_effect.cli import (
    demo,
    growth,
    imitation,
    kk,
    lds,
    plot,
    predict_rl,
    project,
    rank,
    rl_starts,
    rl_validate,
    train,
)
from sample_effect.cli.options import (
    PROG,
    CLIParser,
    SubParsers,
    deprecation_notes,
    flag_for,
    print_deprecations,
)
from sample_effect.errors import ConfigError, SampleEffectError

log = logging.getLogger("sample_effect")


def _add_validate(sub: SubParsers) -> None:
    """`validate CHECK`: the checks of the first-order picture, from the modules that own them."""
    top = sub.add_parser("validate", help="check the predictions against real training (linearization, curves, selection)",
                         description="Three checks of the first-order picture, each writing JSON metrics, a CSV and a figure.")
    checks = top.add_subparsers(dest="check", required=True, metavar="CHECK")
    train.add_validate_parsers(checks)  # linearization
    growth.add_validate_parsers(checks)  # curves, selection
    rl_validate.add_validate_parsers(checks)  # rl-curves
    rl_starts.add_validate_parsers(checks)  # rl-starts
    lds.add_validate_parsers(checks)  # lds


def build_parser() -> argparse.ArgumentParser:
    """The full `sample-effect` argument parser (also used to generate the CLI reference)."""
    from sample_effect import __version__

    parser = CLIParser(
        prog=PROG,
        description="Which fine-tuning examples will move your model, and how fast training will improve it.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    rank.add_parsers(sub)
    kk.add_parsers(sub)
    train.add_parsers(sub)  # train-sft, train-grpo, redistill
    _add_validate(sub)
    demo.add_parsers(sub)
    predict_rl.add_parsers(sub)
    rl_starts.add_parsers(sub)  # reference-direction
    growth.add_parsers(sub)  # predict-sft
    project.add_parsers(sub)
    plot.add_parsers(sub)
    imitation.add_parsers(sub)  # rft, distill, init-tiny, compare-sources, markers
    return parser


def _one_line(exc: BaseException) -> str:
    """An exception's message on one line, whatever it holds (a reward's or a loader's text may span lines).

    A ConfigError names the flags that set its fields rather than the config fields."""
    text = exc.render(flag_for) if isinstance(exc, ConfigError) else str(exc)
    return " ".join(x.strip() for x in text.splitlines() if x.strip())


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `sample-effect` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    logging.basicConfig(format=f"{PROG}: %(levelname)s: %(message)s", level=logging.WARNING, stream=sys.stderr)
    log.setLevel(getattr(logging, str(getattr(args, "log_level", "warning")).upper()))
    for noisy in ("transformers", "torch"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    if "transformers" in sys.modules or _needs_model(args):
        _quiet_transformers()
    func: Callable[[argparse.Namespace], None] = args.func
    try:
        _check_device(args)
        func(args)
    except SampleEffectError as exc:
        if args.debug:
            raise
        # One line: a deprecated spelling's warning joins the error instead of adding a line.
        notes = "".join(f" (note: {n})" for n in deprecation_notes(args))
        print(f"{PROG}: error: {_one_line(exc)}{notes}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    print_deprecations(args)  # after the run, so that a failure stays one line
    return 0


def _check_device(args: argparse.Namespace) -> None:
    """--device, checked before any work (a missing CUDA fails here) and 'auto' resolved to the device it picks."""
    spec = getattr(args, "device", None)
    if spec is not None:
        from sample_effect.models.loading import resolve_device

        args.device = str(resolve_device(spec, "--device"))


def _needs_model(args: argparse.Namespace) -> bool:
    """Whether the command may load a transformers model (kk and plot never do)."""
    return args.command not in ("kk", "plot")


def _quiet_transformers() -> None:
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except Exception:  # pragma: no cover - transformers missing is reported elsewhere
        pass


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
