"""--device on every command that loads a model: parsed everywhere, checked before any work, 'auto' resolved;
tensors built next to the model (a CPU advantage vector with a model elsewhere)."""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pandas as pd
import pytest
import torch

from sample_effect.cli.main import build_parser, main
from sample_effect.errors import SampleEffectError
from sample_effect.models.loading import load_model, resolve_device

ROOT = Path(__file__).resolve().parents[2]
# init-tiny builds a fresh model and saves it (nothing runs on it); demo runs the CPU recipe
# sample_effect.recipes.kk_demo, which loads its own models (it has no --dtype either).
NO_DEVICE = {"init-tiny", "demo"}


def _commands() -> list[tuple[list[str], argparse.ArgumentParser]]:
    """Every (sub)command path and its parser."""
    found = []

    def walk(path: list[str], parser: argparse.ArgumentParser) -> None:
        found.append((path, parser))
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk([*path, name], sub)

    walk([], build_parser())
    return found


def _flags(parser: argparse.ArgumentParser) -> set[str]:
    return {s for a in parser._actions for s in a.option_strings}


def _loads_a_model(parser: argparse.ArgumentParser) -> bool:
    return bool({"--model", "--teacher", "--dtype"} & _flags(parser))


MODEL_COMMANDS = [(p, parser) for p, parser in _commands() if p and _loads_a_model(parser) and p[-1] not in NO_DEVICE]


def _minimal_argv(path: list[str], parser: argparse.ArgumentParser) -> list[str]:
    """The command with a placeholder for every required option (and one flag of every required group)."""
    argv = list(path)
    required = [a for a in parser._actions if a.required and a.option_strings]
    for group in parser._mutually_exclusive_groups:
        if group.required:
            required.append(group._group_actions[0])
    for a in required:
        n = a.nargs if isinstance(a.nargs, int) else 1
        value = a.choices[0] if a.choices else "1"  # parses as a path, a name, an int or a float
        argv += [a.option_strings[0], *[str(value)] * n]
    return argv


def test_model_loading_commands_are_found() -> None:
    names = {" ".join(p) for p, _ in MODEL_COMMANDS}
    for expected in ("rank", "project", "train-sft", "train-grpo", "redistill", "predict-rl", "predict-sft", "rft",
                     "distill", "compare-sources", "markers", "reference-direction", "validate rl-curves",
                     "validate rl-starts", "validate lds", "validate linearization", "validate curves",
                     "validate selection"):
        assert expected in names


@pytest.mark.parametrize(("path", "parser"), MODEL_COMMANDS, ids=[" ".join(p) for p, _ in MODEL_COMMANDS])
def test_every_model_loading_command_takes_device(path: list[str], parser: argparse.ArgumentParser) -> None:
    (action,) = [a for a in parser._actions if "--device" in a.option_strings]
    assert action.default == "auto"
    argv = _minimal_argv(path, parser)
    for spec in ("cpu", "cuda:1", "auto", "mps"):
        assert build_parser().parse_args([*argv, "--device", spec]).device == spec


def test_resolve_device(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device(None) == torch.device("cpu")
    assert resolve_device("CPU") == torch.device("cpu")
    with pytest.raises(SampleEffectError, match=r"--device cuda: CUDA is not available on this machine"):
        resolve_device("cuda", "--device")
    with pytest.raises(SampleEffectError, match=r"device 'gpu': unknown device; choose auto, cpu, cuda, cuda:N or mps"):
        resolve_device("gpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(SampleEffectError, match="only 2 CUDA device"):
        resolve_device("cuda:2")


def test_auto_is_cpu_on_this_machine_and_load_model_honours_it(model_dirs) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: auto picks it")
    assert resolve_device("auto").type == "cpu"
    model, _ = load_model(model_dirs["gpt2"], "float64", device="auto")
    assert {p.device.type for p in model.parameters()} == {"cpu"}


def test_device_cpu_runs_and_matches_the_default(model_dirs, data_files, tmp_path, capsys) -> None:
    base = ["rank", "--model", model_dirs["gpt2"], "--data", data_files["train"], "--target-data", data_files["target"],
            "--quiet"]
    assert main([str(a) for a in [*base, "--out", tmp_path / "cpu.csv", "--device", "cpu"]]) == 0
    assert main([str(a) for a in [*base, "--out", tmp_path / "auto.csv"]]) == 0
    a, b = pd.read_csv(tmp_path / "cpu.csv"), pd.read_csv(tmp_path / "auto.csv")
    assert len(a) == 5 and a["effect"].tolist() == b["effect"].tolist()


def test_device_cuda_without_cuda_fails_before_any_work(model_dirs, tmp_path, capsys, monkeypatch) -> None:
    """No CUDA here (forced, so the test means the same on a GPU machine): one clear line, exit 2, before anything
    is read (the data file does not even exist) or loaded, and nothing written."""
    import sample_effect.models.loading as loading

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(loading, "load_model", lambda *a, **k: pytest.fail("load_model called"))
    out = tmp_path / "r.csv"
    code = main(["rank", "--model", str(model_dirs["gpt2"]), "--data", str(tmp_path / "missing.jsonl"), "--target", "self",
                 "--out", str(out), "--device", "cuda"])
    err = capsys.readouterr().err
    assert code == 2 and not out.exists()
    assert err.startswith("sample-effect: error: --device cuda: CUDA is not available on this machine") and err.count("\n") == 1
    code = main(["train-grpo", "--model", "tiny", "--prompts", str(tmp_path / "missing.jsonl"), "--out",
                 str(tmp_path / "run"), "--device", "cuda:0"])
    assert code == 2 and "--device cuda:0: CUDA is not available" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_grpo_loss_moves_cpu_advantages_to_the_model_device() -> None:
    """Advantages are built on the CPU (rewards are Python floats); the loss must follow the log-probs' device.
    The meta device stands in for a GPU: mixing it with a CPU [B] tensor fails the same way CUDA does."""
    from sample_effect.objectives.losses import grpo_loss

    lp = torch.zeros(3, 4, device="meta")
    mask = torch.ones(3, 4, dtype=torch.bool, device="meta")
    loss = grpo_loss(lp, lp, torch.tensor([1.0, -1.0, 0.5], dtype=torch.float64), mask)
    assert loss.device.type == "meta" and loss.shape == ()


def test_gpu_script_runs_every_cli_command_on_cuda() -> None:
    """benchmarks/gpu.sh: each `sample-effect` command it runs parses and passes --device cuda when it loads a model."""
    text = (ROOT / "benchmarks" / "gpu.sh").read_text()
    joined = re.sub(r"\\\n\s*", " ", text)
    commands = [line.split('"${SE[@]}"', 1)[1] for line in joined.splitlines() if '"${SE[@]}"' in line
                and not line.lstrip().startswith("SE=")]
    assert len(commands) >= 4
    for command in commands:
        argv = [a.replace('"$KK/', "KK/") for a in shlex.split(command.replace("$KK", "KK"))]
        args = build_parser().parse_args(argv)
        if hasattr(args, "device"):
            assert args.device == "cuda", command
