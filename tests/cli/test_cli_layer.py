"""The CLI as a layer: help text and defaults on every option, one-line usage errors, umask-following
outputs, a torch-free start for --help / kk / plot, and deprecated spellings that still work and warn."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from sample_effect.cli.main import build_parser, main
from sample_effect.cli.options import KK_STYLES, OPTIMIZERS, PROJECTION_KINDS

ROOT = Path(__file__).resolve().parents[2]


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _all_parsers() -> list[tuple[str, argparse.ArgumentParser]]:
    found = []

    def walk(prefix: str, parser: argparse.ArgumentParser) -> None:
        found.append((prefix, parser))
        for name, sub in _subparsers(parser).items():
            walk(f"{prefix} {name}", sub)

    walk("sample-effect", build_parser())
    return found


PARSERS = _all_parsers()


@pytest.mark.parametrize(("name", "parser"), PARSERS, ids=[n for n, _ in PARSERS])
def test_every_option_has_help_and_shows_its_default(name: str, parser: argparse.ArgumentParser) -> None:
    problems = []
    for action in parser._actions:
        if not action.option_strings or isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            continue
        flag = "/".join(action.option_strings)
        if not action.help or action.help == argparse.SUPPRESS:
            problems.append(f"{flag}: no help text")
            continue
        formatter = parser._get_formatter()
        shown = " ".join(formatter._format_action(action).split())
        d = action.default
        if not (d is None or d is False or d is argparse.SUPPRESS) and "default" not in shown.lower():
            problems.append(f"{flag}: default {action.default!r} not shown in --help")
    assert not problems, f"{name}: " + "; ".join(problems)


def test_predict_sft_help_says_clipping_is_on_by_default(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["predict-sft", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--max-grad-norm NORM" in text and "default: 1.0, i.e. clipping is on" in text


def test_constants_spelled_for_a_light_parser_match_the_library() -> None:
    from sample_effect.data.kk import STYLES
    from sample_effect.engine.projection import KINDS

    assert PROJECTION_KINDS == KINDS and KK_STYLES == STYLES


def test_optimizer_names_in_the_cli_are_the_registrys(capsys) -> None:
    """--optimizer's choices and help list every registered update rule (the light parser's spelled copy)."""
    from sample_effect.update.rules import update_rules

    assert OPTIMIZERS == tuple(update_rules())
    for argv in (["rank", "--help"], ["predict-rl", "--help"], ["compare-sources", "--help"], ["predict-sft", "--help"],
                 ["validate", "linearization", "--help"]):
        with pytest.raises(SystemExit):
            main(argv)
        text = " ".join(capsys.readouterr().out.split())
        assert "adam, adamw, lion or sgd" in text, argv
    with pytest.raises(SystemExit):
        main(["predict-sft", "--optimizer", "nadam", "--help"])
    assert "choose from adam, adamw, lion, sgd" in capsys.readouterr().err.replace("'", "")


def test_every_data_command_has_the_format_flags() -> None:
    for name, parser in PARSERS:
        flags = {s for a in parser._actions for s in a.option_strings}
        if "--data" in flags:
            assert {"--split", "--id-field", "--prompt-field", "--response-field", "--messages-field"} <= flags, name


@pytest.mark.parametrize("argv", [
    ["rank", "--top-k", "0"],
    ["kk", "--people", "3", "--n", "0", "--out", "x.jsonl"],
    ["kk", "--people", "3"],
    ["no-such-command"],
    ["plot", "effects", "--out", "x.png"],
])
def test_usage_errors_are_one_line(argv: list[str], capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    cap = capsys.readouterr()
    lines = [x for x in cap.err.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("sample-effect: error: "), cap.err
    assert "usage:" not in cap.err + cap.out


def test_one_line_error_names_the_value(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["kk", "--people", "3", "--n", "0", "--out", "x.jsonl"])
    assert "argument --n: must be >= 1, got 0" in capsys.readouterr().err


def test_outputs_follow_the_umask(tmp_path: Path, capsys) -> None:
    old = os.umask(0o022)
    try:
        assert main(["kk", "--people", "2", "--n", "2", "--out", str(tmp_path / "a.jsonl")]) == 0
        os.umask(0o077)
        assert main(["kk", "--people", "2", "--n", "2", "--out", str(tmp_path / "b.jsonl")]) == 0
    finally:
        os.umask(old)
    assert (tmp_path / "a.jsonl").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "b.jsonl").stat().st_mode & 0o777 == 0o600


def test_write_table_follows_the_umask(tmp_path: Path) -> None:
    import pandas as pd

    from sample_effect.io import write_table

    old = os.umask(0o002)
    try:
        write_table(pd.DataFrame({"a": [1]}), tmp_path / "t.csv")
    finally:
        os.umask(old)
    assert (tmp_path / "t.csv").stat().st_mode & 0o777 == 0o664


_PROBE = (
    "import runpy, sys\n"
    "sys.argv = ['sample-effect', *sys.argv[1:]]\n"
    "try:\n"
    "    runpy.run_module('sample_effect', run_name='__main__')\n"
    "except SystemExit:\n"
    "    pass\n"
    "print('heavy:', sorted(m for m in ('torch', 'transformers') if m in sys.modules), file=sys.stderr)\n"
)


@pytest.mark.parametrize("argv", [
    ["--help"],
    ["plot", "--help"],
    ["rank", "--help"],
    ["kk", "--people", "3", "--n", "2", "--out", "{tmp}/kk.jsonl"],
])
def test_help_and_kk_do_not_import_torch(argv: list[str], tmp_path: Path) -> None:
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    proc = subprocess.run([sys.executable, "-c", _PROBE, *argv], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert "heavy: []" in proc.stderr, proc.stderr


def test_import_sample_effect_is_light_and_names_resolve() -> None:
    code = ("import sys, sample_effect as s; assert 'torch' not in sys.modules; "
            "names = [getattr(s, n) for n in s.__all__]; assert 'torch' in sys.modules; print(len(names))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout) == 16  # the facade API (issue 27: about a dozen names around Analyzer)


@pytest.mark.parametrize(("old", "new", "value", "dest"), [
    ("--clip", "--max-grad-norm", "1.5", "max_grad_norm"),
    ("--batch-size", "--chunk-size", "4", "chunk_size"),
])
@pytest.mark.parametrize("command", [["rank", "--target", "self", "--out", "o.csv"], ["project", "--out", "cache"]])
def test_deprecated_spellings_parse_like_the_new_ones(command, old, new, value, dest) -> None:
    parser = build_parser()
    head = [command[0], "--model", "m", "--data", "d.jsonl", *command[1:]]
    a = parser.parse_args([*head, old, value])
    b = parser.parse_args([*head, new, value])
    assert getattr(a, dest) == getattr(b, dest) == type(getattr(b, dest))(value)
    assert a.deprecations == [f"{old} is deprecated here" + (" (--batch-size is a training batch elsewhere)" if old == "--batch-size" else "")
                              + f"; use {new}"]
    assert not getattr(b, "deprecations", None)


def test_predict_rl_and_compare_sources_take_the_new_spellings() -> None:
    parser = build_parser()
    a = parser.parse_args(["predict-rl", "--model", "m", "--prompts", "p", "--target-data", "t", "--out", "o.json",
                           "--clip", "2", "--batch-size", "3"])
    assert (a.max_grad_norm, a.chunk_size, len(a.deprecations)) == (2.0, 3, 2)
    c = parser.parse_args(["compare-sources", "--source", "a=f", "--model", "m", "--target-data", "t", "--out", "o.csv"])
    assert c.max_grad_norm == 1.0 and c.batch_size == 8  # --batch-size stays the training batch there


def test_deprecated_spelling_warns_after_a_successful_run(tmp_path: Path, capsys, monkeypatch) -> None:
    """kk has no deprecated flag, so a parsed rank namespace is run through main's reporting instead."""
    from sample_effect.cli import main as cli_main

    real = cli_main.build_parser

    def parser_with_fake_rank():  # rank with --clip, but the command itself replaced by a no-op
        p = real()
        rank = _subparsers(p)["rank"]
        rank.set_defaults(func=lambda args: print("ran"))
        return p

    monkeypatch.setattr(cli_main, "build_parser", parser_with_fake_rank)
    code = cli_main.main(["rank", "--model", "m", "--data", "d", "--target", "self", "--out", str(tmp_path / "o.csv"),
                          "--clip", "1", "--batch-size", "2"])
    cap = capsys.readouterr()
    assert code == 0 and cap.out == "ran\n"
    assert cap.err.splitlines() == [
        "sample-effect: warning: --clip is deprecated here; use --max-grad-norm",
        "sample-effect: warning: --batch-size is deprecated here (--batch-size is a training batch elsewhere); use --chunk-size",
    ]


def test_deprecated_spelling_joins_the_one_error_line(tmp_path: Path, capsys) -> None:
    code = main(["rank", "--model", str(tmp_path / "none"), "--data", "d", "--target", "self",
                 "--out", str(tmp_path / "o.csv"), "--clip", "0"])
    lines = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    assert code == 2 and len(lines) == 1
    assert lines[0].startswith("sample-effect: error: --clip must be a positive number, got 0.0")
    assert lines[0].endswith("(note: --clip is deprecated here; use --max-grad-norm)")


def test_clipping_off_is_max_grad_norm_zero() -> None:
    from sample_effect.cli.options import clip_from_args

    parser = build_parser()
    rank = ["rank", "--model", "m", "--data", "d", "--target", "self", "--out", "o.csv"]
    assert clip_from_args(parser.parse_args([*rank, "--max-grad-norm", "0"])) is None
    assert clip_from_args(parser.parse_args(rank)) is None
    assert clip_from_args(parser.parse_args([*rank, "--max-grad-norm", "0.5"])) == 0.5
    assert parser.parse_args(["train-sft", "--model", "m", "--data", "d", "--out", "o", "--max-grad-norm", "0"]).max_grad_norm is None
    cmp = ["compare-sources", "--source", "a=f", "--model", "m", "--target-data", "t", "--out", "o.csv"]
    assert clip_from_args(parser.parse_args([*cmp, "--max-grad-norm", "0"]), clip_zero_is_off=True) is None
    assert clip_from_args(parser.parse_args([*cmp, "--clip", "0"]), clip_zero_is_off=True) is None


def test_rank_explain_needs_no_out(tmp_path: Path, capsys) -> None:
    args = build_parser().parse_args(["rank", "--model", "m", "--data", "d", "--target", "self", "--explain"])
    assert args.out is None
    code = main(["rank", "--model", str(tmp_path / "none"), "--data", "d", "--target", "self"])
    err = capsys.readouterr().err
    assert code == 2 and "rank needs --out FILE" in err


def test_rank_explain_without_out_prints_the_plan(model_dirs, data_files, tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    argv = ["rank", "--model", str(model_dirs["gpt2"]), "--data", str(data_files["train"]), "--target", "self",
            "--max-grad-norm", "1", "--optimizer", "adamw", "--explain", "--quiet"]
    assert main(argv) == 0
    assert "expected peak memory" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []


def test_cli_modules_import_only_options_and_the_library() -> None:
    """No command module imports another command module (main is the only one that imports them all)."""
    cli = ROOT / "sample_effect" / "cli"
    for f in cli.glob("*.py"):
        if f.name in ("main.py", "__init__.py"):
            continue
        text = f.read_text()
        others = set(re.findall(r"sample_effect\.cli\.(\w+)", text)) | set(re.findall(r"from sample_effect\.cli import (\w+)", text))
        assert others <= {"options"}, (f.name, others)


# The target flags each command accepts (what G can be); `add_target_args` declares them all.
TARGET_FLAGS_OF = {
    "rank": {"--target-data", "--target", "--direction", "--target-prompts", "--normalize"},
    "predict-rl": {"--target-data", "--direction", "--target-prompts", "--normalize"},
    "predict-sft": {"--target-data", "--direction"},
    "validate curves": {"--target-data"},  # the real runs measure an eval loss
    "validate selection": {"--target-data"},
    "validate rl-curves": {"--target-data"},
    "validate rl-starts": {"--target-data", "--direction", "--target"},
    "validate lds": {"--target-data"},  # --target: the measurement, not 'self'
    "validate linearization": {"--target-data"},
    "compare-sources": {"--target-data"},
    "markers": {"--target-data"},
}


def test_every_command_declares_its_target_flags_through_add_target_args() -> None:
    """The target flags are declared once (cli/options.add_target_args): no command module spells them in an
    add_argument call, and each command accepts exactly its kinds of target."""
    import ast

    from sample_effect.cli.options import TARGET_FLAGS

    flags = {*TARGET_FLAGS.values(), "--normalize"}
    for f in (ROOT / "sample_effect" / "cli").glob("*.py"):
        if f.name == "options.py":
            continue
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument":
                spelled = {a.value for a in node.args if isinstance(a, ast.Constant)} & flags
                assert not spelled, f"{f.name}:{node.lineno} declares {sorted(spelled)} by hand; use add_target_args"
    found = {name.removeprefix("sample-effect "): {s for a in parser._actions for s in a.option_strings} & flags
             for name, parser in PARSERS}
    assert {name: fl for name, fl in found.items() if fl} == TARGET_FLAGS_OF
