"""The docs cannot drift: the CLI reference is regenerated and compared, and every documented
`sample-effect ...` command line parses with the current parser (flags, choices, required args);
`tests/test_docs_run.py` runs each of them."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def documented_commands(pattern: str = r"^(\$ )?(PYTHONPATH=\S+ )?sample-effect \S") -> list[tuple[str, str]]:
    """(file:line, command) for every `sample-effect ...` line (optionally after `PYTHONPATH=...`) in a
    code block, continuations joined; `pattern` picks other shell lines (`tests/test_docs_run.py`
    also runs the `mkdir` ones)."""
    found = []
    for path in DOCS:
        if path.name == "cli.md":
            continue
        lines = path.read_text().splitlines()
        in_block, i = False, 0
        while i < len(lines):
            line = lines[i]
            if line.strip().startswith("```"):
                in_block = not in_block
            indented = line.startswith("    ") and not in_block
            text = line.strip()
            if (in_block or indented) and re.match(pattern, text):
                start = i
                cmd = text.removeprefix("$ ")
                while cmd.endswith("\\") and i + 1 < len(lines):
                    i += 1
                    cmd = cmd[:-1] + " " + lines[i].strip()
                cmd = cmd.split(" #")[0].strip()
                found.append((f"{path.name}:{start + 1}", cmd))
            i += 1
    return found


COMMANDS = documented_commands()


def env_prefix(command: str) -> str:
    """The `NAME=value ` assignments before `sample-effect` ('' if none)."""
    return command[: command.index("sample-effect")]


def test_docs_document_commands():
    assert len(COMMANDS) >= 10


@pytest.mark.parametrize(("where", "command"), COMMANDS, ids=[w for w, _ in COMMANDS])
def test_documented_command_parses(where, command):
    from sample_effect.cli.main import build_parser

    argv = shlex.split(command.removeprefix(env_prefix(command)))[1:]
    argv = [a for a in argv if a not in ("|",)]
    if "|" in command or ">" in command:
        pytest.skip("shell pipeline")
    try:
        build_parser().parse_args(argv)
    except SystemExit as exc:
        pytest.fail(f"{where}: `{command}` does not parse (exit {exc.code})")


def test_cli_reference_is_up_to_date():
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_cli_reference.py"), "--check"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_architecture_lists_every_module():
    """docs/architecture.md's folder table names every module of the package and of kernels/."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    rows = {line.split("|")[1].strip().strip("`"): line for line in text.splitlines() if line.startswith("| `")}
    missing = []
    for path in [*(ROOT / "sample_effect").rglob("*.py"), *(ROOT / "kernels").rglob("*.py")]:
        if path.name == "__init__.py" or path.parent.name == "sample_effect":
            continue
        rel = path.parent.relative_to(ROOT if path.is_relative_to(ROOT / "kernels") else ROOT / "sample_effect")
        row = rows.get(f"{rel.as_posix()}/", "")
        if f"`{path.name}`" not in row:
            missing.append(f"{rel.as_posix()}/{path.name}")
    assert not missing, f"docs/architecture.md does not list: {missing}"
