"""`sample-effect kk`: generate Knights-and-Knaves puzzles as SFT JSONL (no model, no torch)."""

from __future__ import annotations

import argparse

from sample_effect.cli.options import KK_STYLES, SubParsers, add_common_args, positive_int


def add_parsers(sub: SubParsers) -> None:
    """Register `kk`."""
    p = sub.add_parser(
        "kk",
        help="generate Knights-and-Knaves puzzles as SFT JSONL",
        description="Generate Knights-and-Knaves puzzles with exactly one solution, written as JSONL lines "
        "with SFT fields (id, prompt, response) plus answer, names, statements, solution.",
    )
    p.add_argument("--people", type=int, required=True, help="people per puzzle, 2..8")
    p.add_argument("--n", type=positive_int, required=True, help="number of puzzles")
    p.add_argument("--seed", type=int, default=1234, help="generator seed (same seed, same puzzles)")
    p.add_argument("--style", default="short-cot", choices=KK_STYLES, help="response style")
    p.add_argument("--id-prefix", default="kk", help="prefix of each id")
    p.add_argument("--out", required=True, help="output JSONL file")
    add_common_args(p)
    p.set_defaults(func=cmd_kk)


def cmd_kk(args: argparse.Namespace) -> None:
    """`sample-effect kk`: generate puzzles."""
    from sample_effect.data.kk import write_kk
    from sample_effect.io import check_output_path

    check_output_path(args.out, args.overwrite)
    recs = write_kk(args.out, args.people, args.n, args.seed, args.style, args.id_prefix)
    print(f"wrote {len(recs)} {args.people}-person puzzles ({args.style}) to {args.out}")
