"""Write docs/cli.md from the argument parsers, so the CLI reference cannot drift from the code.

    python scripts/gen_cli_reference.py            # rewrite docs/cli.md
    python scripts/gen_cli_reference.py --check    # exit 1 if docs/cli.md is out of date (used by tests)
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "cli.md"


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def render() -> str:
    """The whole reference: `--help` of every command and sub-command, in parser order."""
    os.environ["COLUMNS"] = "100"  # argparse wraps to the terminal; fix it so the file is stable
    from sample_effect.cli.main import build_parser

    top = build_parser()
    parts = [
        "# CLI reference",
        "",
        "Generated from the argument parsers by `python scripts/gen_cli_reference.py`; "
        "`tests/test_docs.py` fails when it is out of date.",
        "",
        "```text",
        top.format_help().rstrip(),
        "```",
        "",
    ]

    def walk(prefix: str, parser: argparse.ArgumentParser) -> None:
        for name, sub in _subparsers(parser).items():
            parts.extend([f"## `{prefix} {name}`", "", "```text", sub.format_help().rstrip(), "```", ""])
            walk(f"{prefix} {name}", sub)

    walk("sample-effect", top)
    return "\n".join(parts)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only compare; exit 1 if docs/cli.md differs")
    args = ap.parse_args()
    text = render()
    if args.check:
        if not DOC.exists() or DOC.read_text() != text:
            print(f"{DOC} is out of date; run python scripts/gen_cli_reference.py", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(text)
    print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
