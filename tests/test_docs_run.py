"""Every documented `sample-effect ...` command runs, so the docs cannot drift.

`tests/test_docs.py` finds every `sample-effect ...` line (also after `PYTHONPATH=.`) in a code
block of README.md and docs/*.md (`documented_commands`; docs/cli.md is generated and checked
there). This file runs each of them, in document order, in-process via `sample_effect.cli.main.main`
with the working directory set to a sandbox of its document, and checks that it exits 0 and
writes what it names. Run the whole file: later commands read what earlier ones wrote.

The sandbox. Each document gets its own copy of one seed directory holding the inputs the docs
name: tiny Knights-and-Knaves files made by `sample-effect kk` (`SEED_DATA`) and, for the
placeholder model names (`MODEL_DIR`, `path/to/model`, `ckpt`, `base`, ...), links to a copy of
the shipped `tiny` model (`MODEL_NAMES`). A file the document spells out ("`plain_answer.py`:"
and an indented block) is written there from the document's own text, and the document's
`mkdir -p DIR` lines are applied before the commands that follow them. Later commands use what
earlier ones of the same document wrote (train-sft -> runs/sft/final -> train-grpo ->
runs/grpo/final -> redistill), never another document's.

What runs. Each command exactly as written, plus, appended at the end:
- the size overrides of its subcommand in `OVERRIDES` (argparse keeps the last value, so they
  only cut steps, rounds, samples, new tokens and puzzle counts to a few);
- `IF_GIVEN` overrides, which replace a size flag only where the doc gives it (appending them
  elsewhere would add work the doc does not ask for);
- `--debug`, so a failure shows its traceback instead of one line.
A command's outputs (`--out`, `--export`, `--finetune-out`, `--ranking`, `--rollouts`, and the
files written next to an `--out` file: `markers.csv` -> `markers.json`) are removed before it
runs, since the docs reuse names such as `effects.csv` and `runs/rft` for alternatives, and must
exist after it (except with `--explain`, which prints a plan and writes nothing).

Nothing documented is skipped: a subcommand without an `OVERRIDES` entry fails (add one, possibly
empty), and so does a command whose inputs are neither in the seed nor written by an earlier
command of its document (add them to `SEED_DATA` / `MODEL_NAMES`). The only exceptions are in
`NEEDS_STRONGER_POLICY`: commands that need a policy which already solves puzzles, which the
test's one-step checkpoints of the tiny model are not; they must stop with exactly that error
and are reported as xfail; and the commands of illustrative blocks (`ILLUSTRATIVE`): a fenced
block whose first line is a comment starting with `# illustrative` shows a command on the
reader's own model, data and GPU (`./my-sft-checkpoint`, a Hub id, `--device cuda`). Such a
command is still parsed by `tests/test_docs.py` (every flag must exist) and reported here as a
skip; it is not run.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import sys
from pathlib import Path

import pytest
import torch
from test_docs import COMMANDS, DOCS, documented_commands, env_prefix

from sample_effect.cli.main import main
from sample_effect.errors import SampleEffectError
from sample_effect.models.registry import TINY_SMALL

# The docs' own `mkdir -p DIR` lines (e.g. `runs/`), applied before the later commands of their document.
MKDIRS = documented_commands(r"^mkdir -p \S")

# Size overrides appended to every documented command of a subcommand.
OVERRIDES: dict[str, str] = {
    "kk": "--n 4",
    "rank": "",
    "project": "--dim 16",
    "train-sft": "--steps 1 --eval-max-new-tokens 8",
    "train-grpo": "--steps 1 --prompts-per-step 2 --group-size 2 --max-new-tokens 8 --eval-max-new-tokens 8",
    "redistill": "--samples-per-prompt 1 --max-new-tokens 8 --epochs 1",
    "predict-sft": "--steps 1 --replicates 2",
    "predict-rl": "--group-size 2 --max-new-tokens 8 --target-samples 2 --target-max-new-tokens 8 --bootstrap 20",
    "validate linearization": "--lrs 1e-5,1e-4",
    "validate curves": "--steps 2 --eval-every 1 --replicates 2",
    "validate selection": "--k 2 --steps 1 --random-seeds 1 --eval-max-new-tokens 8",
    "validate rl-curves": "--steps 1 --runs 1 --prompts-per-step 2 --group-size 2 --max-new-tokens 8 --noise-draws 4",
    "reference-direction": "--steps 1 --prompts-per-step 2 --group-size 2 --max-new-tokens 8",
    "validate rl-starts": "--runs 2 --steps 1 --accuracy-every 1 --prompts-per-step 2 --group-size 2 --max-new-tokens 8 "
                          "--eval-samples 2 --target-samples 2 --noise-draws 4 --bootstrap 100",
    "validate lds": "--subsets 3 --steps 1 --bootstrap 100 --methods sgd,adamw",
    "plot curves": "",
    "rft": "--rounds 1 --samples-per-prompt 2 --max-new-tokens 8 --eval-max-new-tokens 8 --entropy-samples 1 --steps 1",
    "distill": "--samples-per-prompt 1 --max-new-tokens 8 --prompts-per-step 2 --steps 1",
    "compare-sources": "--bootstrap 20",
    "markers": "--max-new-tokens 8",
    "init-tiny": "",
    "demo": "--n-pool 4 --n-target 2 --n-test 2 --top-k 3 --epochs 1 --random-draws 2 --max-new-tokens 16 "
            "--start-examples 4 --start-steps 2 --rl-prompts 4 --rl-eval 2 --rl-steps 2 --rl-prompts-per-step 2 "
            "--group-size 2 --rl-max-new-tokens 12",
}
# Size overrides that replace a flag's value only where the documented command gives the flag.
IF_GIVEN: dict[str, str] = {
    "compare-sources": "--train-steps 1",
}
# Commands that need a policy already solving puzzles in the kk format (`\boxed{}`), which the
# test's one-step checkpoints of the tiny model are not. Each must run up to the reward check and
# stop there with this error (anything else, e.g. a flag or an input that no longer exists, fails);
# then it is reported as xfail.
NEEDS_STRONGER_POLICY: dict[str, str] = {
    "sample-effect redistill --model runs/grpo/final --prompts sft_prompts.jsonl --out redistilled.jsonl"
    "  --finetune tiny --finetune-out runs/redistilled": "no completion was accepted by the reward",
}
# Flags naming what a command writes: removed before it runs, required after.
OUTPUT_FLAGS = ("--out", "--export", "--finetune-out", "--ranking", "--rollouts", "--stability-out")
SIDE_SUFFIXES = (".json", ".csv", ".png", ".svg", ".stability.csv")  # what commands write next to an --out file


def illustrative_lines() -> set[str]:
    """'file:line' of every line inside a fenced block whose first line starts with `# illustrative`."""
    found = set()
    for path in DOCS:
        lines = path.read_text().splitlines()
        i = 0
        while i < len(lines):
            if lines[i].strip().startswith("```"):
                j = i + 1
                while j < len(lines) and not lines[j].strip().startswith("```"):
                    j += 1
                if i + 1 < j and lines[i + 1].strip().lower().startswith("# illustrative"):
                    found.update(f"{path.name}:{k + 1}" for k in range(i + 1, j))
                i = j
            i += 1
    return found


# Commands shown on the reader's own model and data (not runnable offline): parsed, not run.
ILLUSTRATIVE = illustrative_lines()

# Seed data: file -> `sample-effect kk` arguments (2-person puzzles, a handful each).
SEED_DATA: dict[str, str] = {
    "train.jsonl": "--n 4 --seed 11",
    "val.jsonl": "--n 2 --seed 12",
    "pool.jsonl": "--n 6 --seed 13",
    "kk.jsonl": "--n 4 --seed 14",
    "rl.jsonl": "--n 4 --seed 15",
    "rl_eval.jsonl": "--n 2 --seed 16",
    "test.jsonl": "--n 2 --seed 17",
    "sft_prompts.jsonl": "--n 2 --seed 18",
    "kk_train.jsonl": "--n 4 --seed 19",
    "kk_test.jsonl": "--n 2 --seed 20",
    "human.jsonl": "--n 4 --seed 21",
    "answer_only.jsonl": "--n 4 --seed 22 --style answer-only",
    "long_cot.jsonl": "--n 4 --seed 23 --style long-cot",
    "a.jsonl": "--n 3 --seed 24 --style long-cot",
    "b.jsonl": "--n 3 --seed 25 --style short-cot",
    "my_sft.jsonl": "--n 3 --seed 26 --style short-cot",
    "heldout.jsonl": "--n 2 --seed 27 --style answer-only",
}
# Placeholder model names in the docs: each is the shipped tiny model.
MODEL_NAMES = ("MODEL_DIR", "path/to/model", "MODEL", "ckpt", "base", "big", "small", "sft-answer-only", "sft-short-cot",
               "sft-long-cot")


def documented_files(doc: str) -> dict[str, str]:
    """Files a document spells out: a line ending in "`NAME.py`:" followed by an indented block."""
    lines = next(p for p in DOCS if p.name == doc).read_text().splitlines()
    files = {}
    for i, line in enumerate(lines):
        m = re.search(r"`([\w/]+\.py)`:$", line.strip())
        if not m:
            continue
        j = i + 1
        while j < len(lines) and not lines[j].strip():
            j += 1
        block = []
        while j < len(lines) and (lines[j].startswith("    ") or not lines[j].strip()):
            block.append(lines[j][4:])
            j += 1
        files[m.group(1)] = "\n".join(block).strip() + "\n"
    return files


def subcommand(argv: list[str]) -> str:
    """`validate curves`, `plot curves`, or the single word of other commands."""
    return " ".join(argv[:2]) if argv[0] in ("validate", "plot") else argv[0]


def flag_values(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == flag]


@contextlib.contextmanager
def working_dir(path: Path):
    old = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


@contextlib.contextmanager
def python_path(path: Path | None):
    """`PYTHONPATH=path` for an in-process run: on sys.path, and its modules forgotten afterwards."""
    if path is None:
        yield
        return
    before = set(sys.modules)
    sys.path.insert(0, str(path))
    try:
        yield
    finally:
        sys.path.remove(str(path))
        for name in set(sys.modules) - before:
            if str(getattr(sys.modules[name], "__file__", None) or "").startswith(str(path)):
                del sys.modules[name]


def run_cli(argv: list[str]) -> None:
    try:
        code = main(argv)
    except SampleEffectError as exc:
        raise AssertionError(f"`sample-effect {shlex.join(argv)}` failed: {exc} (a missing input belongs in "
                             "SEED_DATA / MODEL_NAMES unless an earlier command of the document writes it)") from exc
    assert code == 0, f"`sample-effect {shlex.join(argv)}` exited {code}"


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models on a shared 2-core machine: one thread is several times faster than contention
    (measured here: 13 s with one thread, 4.5 min with two, while other jobs used the cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def seed_dir(tmp_path_factory) -> Path:
    seed = tmp_path_factory.mktemp("docs-seed")
    shutil.copytree(TINY_SMALL, seed / "tiny-model")  # the 685K base keeps the documented commands fast
    with working_dir(seed):
        for name, args in SEED_DATA.items():
            run_cli(["kk", "--people", "2", *shlex.split(args), "--id-prefix", Path(name).stem, "--out", name, "--quiet"])
    return seed


@pytest.fixture(scope="module")
def sandboxes(seed_dir, tmp_path_factory):
    """One sandbox per document, made on first use."""
    made: dict[str, Path] = {}

    def get(doc: str) -> Path:
        if doc not in made:
            box = tmp_path_factory.mktemp("docs-" + doc.replace(".", "-"))
            for name in SEED_DATA:
                shutil.copy(seed_dir / name, box / name)
            for name in MODEL_NAMES:
                link = box / name
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(seed_dir / "tiny-model", target_is_directory=True)
            for name, text in documented_files(doc).items():
                (box / name).write_text(text)
            made[doc] = box
        return made[doc]

    return get


def test_every_documented_subcommand_has_overrides():
    subs = {subcommand(shlex.split(c.removeprefix(env_prefix(c)))[1:]) for w, c in COMMANDS if w not in ILLUSTRATIVE}
    missing = sorted(subs - set(OVERRIDES))
    assert not missing, f"add size overrides (possibly empty) to OVERRIDES for: {missing}"


@pytest.mark.parametrize(("where", "command"), COMMANDS, ids=[w for w, _ in COMMANDS])
def test_documented_command_runs(where, command, sandboxes):
    if where in ILLUSTRATIVE:
        pytest.skip(f"{where}: illustrative block (the reader's own model and data); parsed by tests/test_docs.py")
    assert "|" not in command and ">" not in command, f"{where}: shell pipelines and redirections are not run yet"
    env = shlex.split(env_prefix(command))
    argv = shlex.split(command.removeprefix(env_prefix(command)))[1:]
    sub = subcommand(argv)
    assert sub in OVERRIDES, f"{where}: no size overrides for `{sub}`; add an entry to OVERRIDES"
    argv += shlex.split(OVERRIDES[sub])
    given = shlex.split(IF_GIVEN.get(sub, ""))
    for flag, value in zip(given[::2], given[1::2]):
        if flag in argv:
            argv += [flag, value]
    argv.append("--debug")

    doc, line = where.split(":")
    box = sandboxes(doc)
    for mk_where, mkdir in MKDIRS:
        mk_doc, mk_line = mk_where.split(":")
        if mk_doc == doc and int(mk_line) < int(line) and mk_where not in ILLUSTRATIVE:
            for d in shlex.split(mkdir)[2:]:
                (box / d).mkdir(parents=True, exist_ok=True)
    outputs = [o for flag in OUTPUT_FLAGS for o in flag_values(argv, flag)]
    for out in outputs:  # with the files written next to it (X.csv -> X.json, X.png), not inputs
        side = [out.removesuffix(Path(out).suffix) + suffix for suffix in SIDE_SUFFIXES]
        for p in [box / out, *(box / f for f in side if f not in argv)]:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    assert env in ([], ["PYTHONPATH=."]), f"{where}: only `PYTHONPATH=.` is supported before sample-effect"
    with working_dir(box), python_path(box if env else None):
        if command in NEEDS_STRONGER_POLICY:
            with pytest.raises(SampleEffectError, match=re.escape(NEEDS_STRONGER_POLICY[command])):
                main(argv)
            pytest.xfail(f"ran up to `{NEEDS_STRONGER_POLICY[command]}`: the sandbox's policy is too weak")
        run_cli(argv)
    if "--explain" not in argv:
        for out in outputs:
            assert (box / out).exists(), f"{where}: `{command}` did not write {out}"


# `torchrun ... -m sample_effect CMD ...` lines: single-node ones run with 2 gloo processes (the doc's
# --nproc_per_node replaced), multi-node ones (with `...` for the elided flags) only parse.
TORCHRUN = documented_commands(r"^torchrun \S")


def torchrun_parts(command: str) -> tuple[list[str], list[str]]:
    """(torchrun's own arguments, the sample_effect argv) of a documented torchrun line."""
    argv = shlex.split(command)[1:]
    k = argv.index("-m")
    assert argv[k + 1] == "sample_effect", f"`{command}`: expected `-m sample_effect`"
    return argv[:k], argv[k + 2 :]


def test_docs_document_torchrun():
    assert len(TORCHRUN) >= 3


@pytest.mark.slow
@pytest.mark.parametrize(("where", "command"), TORCHRUN, ids=[w for w, _ in TORCHRUN])
def test_documented_torchrun_runs(where, command, sandboxes):
    import subprocess

    from sample_effect.cli.main import build_parser

    launcher, argv = torchrun_parts(command)
    if "..." in argv:  # a multi-node sketch: the launcher's flags and the command's name must be real
        assert "--nnodes" in launcher and argv[0] in OVERRIDES, f"{where}: `{command}`"
        return
    sub = subcommand(argv)
    argv = [*argv, *shlex.split(OVERRIDES[sub]), "--quiet"]
    build_parser().parse_args(argv)
    doc = where.split(":")[0]
    box = sandboxes(doc)
    for out in flag_values(argv, "--out"):
        for p in [box / out, *(box / (out.removesuffix(Path(out).suffix) + s) for s in SIDE_SUFFIXES)]:
            if p.exists():
                p.unlink()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "sample_effect", *argv]
    run = subprocess.run(cmd, cwd=box, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, f"{where}: `{command}` failed:\n{run.stderr[-3000:]}"
    for out in flag_values(argv, "--out"):
        assert (box / out).exists(), f"{where}: `{command}` did not write {out}"


def inline_plot_commands() -> list[tuple[str, str]]:
    """(file:line, command) for every `sample-effect plot ...` written inline in backticks (tables, prose)."""
    found = []
    for path in DOCS:
        if path.name == "cli.md":
            continue
        for i, line in enumerate(path.read_text().splitlines(), 1):
            for m in re.finditer(r"`(sample-effect plot [^`]+)`", line):
                found.append((f"{path.name}:{i}", m.group(1).replace("\\|", "|")))
    return found


INLINE = inline_plot_commands()
# Size overrides for inline commands: the sandbox's GRPO run has 1 step of 2 groups of 2 short rollouts.
INLINE_OVERRIDES = {"plot quantile-curves": "--steps 1 --min-count 1", "plot quantiles": "--min-count 1"}
# Inline commands whose input only a Python snippet writes (snippets are not run here).
INLINE_NOT_RUN = {
    "sample-effect plot training runs/sft/target.csv --y actual_change --out change.png":
        "runs/sft/target.csv is written by the TRL callback of the Python snippet",
}


@pytest.mark.parametrize(("where", "command"), INLINE, ids=[w for w, _ in INLINE])
def test_documented_inline_plot_runs(where, command, sandboxes):
    """Runs after every code-block command (module order), in the same document sandbox: its inputs exist."""
    if command in INLINE_NOT_RUN:
        from sample_effect.cli.main import build_parser

        build_parser().parse_args(shlex.split(command)[1:])  # it still parses
        pytest.skip(INLINE_NOT_RUN[command])
    argv = shlex.split(command)[1:]
    if len(argv) < 3 or argv[1] == "KIND":  # a mention (`sample-effect plot quantiles`) or the syntax line
        return
    argv += shlex.split(INLINE_OVERRIDES.get(" ".join(argv[:2]), ""))
    doc = where.split(":")[0]
    box = sandboxes(doc)
    outputs = flag_values(argv, "--out")
    for out in outputs:  # with what is written next to it, but never an input of this command
        side = [out.removesuffix(Path(out).suffix) + s for s in SIDE_SUFFIXES]
        for p in [box / out, *(box / f for f in side if f not in argv)]:
            if p.exists():
                p.unlink()
    with working_dir(box):
        run_cli([*argv, "--debug"])
    for out in outputs:
        assert (box / out).exists(), f"{where}: `{command}` did not write {out}"
