"""--chat-template auto|none|FILE: what RL prompts become before sampling, in the library and in every command
that samples from RL prompt files (predict-rl, train-grpo, validate rl-curves / rl-starts, redistill, rft, distill)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from conftest import CORPUS, write_jsonl

from sample_effect.cli.main import main
from sample_effect.errors import ConfigError, SampleEffectError
from sample_effect.models.tiny import build_tiny_model, save_model, train_tokenizer
from sample_effect.rollouts.prompts import RLPrompt, chat_template_prompts

TEMPLATE = ("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}[assistant] {% endif %}")
FILE_TEMPLATE = "{% for m in messages %}<<{{ m['content'] }}>>{% endfor %}{% if add_generation_prompt %}=>{% endif %}"
PROMPTS = [RLPrompt("a", "Alice said, Bob is a knight.", "x"), RLPrompt("b", "Who is a knave?", "y")]


@pytest.fixture(scope="module")
def toks():
    with_template = train_tokenizer(CORPUS * 5, vocab_size=320, chat_template=False)
    with_template.chat_template = TEMPLATE
    without = train_tokenizer(CORPUS * 5, vocab_size=320, chat_template=False)
    assert without.chat_template is None
    return with_template, without


def test_library_auto_none_and_file(toks, tmp_path, caplog) -> None:
    with_template, without = toks
    assert chat_template_prompts(PROMPTS, with_template, "none") == PROMPTS
    auto = chat_template_prompts(PROMPTS, with_template, "auto")
    assert [p.prompt for p in auto] == ["[user] Alice said, Bob is a knight.\n[assistant] ", "[user] Who is a knave?\n[assistant] "]
    assert [(p.id, p.answer) for p in auto] == [("a", "x"), ("b", "y")]
    with caplog.at_level(logging.WARNING, logger="sample_effect"):
        assert chat_template_prompts(PROMPTS, without, "auto") == PROMPTS
    assert "has no chat template, so the prompts stay raw text" in caplog.text
    f = tmp_path / "t.jinja"
    f.write_text(FILE_TEMPLATE)
    for tok in (with_template, without):  # a file replaces the tokenizer's own template, or supplies one
        assert [p.prompt for p in chat_template_prompts(PROMPTS, tok, str(f))] == ["<<Alice said, Bob is a knight.>>=>",
                                                                                   "<<Who is a knave?>>=>"]
    with pytest.raises(ConfigError, match=r"chat_template_prompts\.template must be auto, none or a Jinja template file"):
        chat_template_prompts(PROMPTS, with_template, str(tmp_path / "missing.jinja"))
    (tmp_path / "bad.jinja").write_text("{% for m in messages %}")
    with pytest.raises(ConfigError, match="could not render prompt 'a'"):
        chat_template_prompts(PROMPTS, with_template, str(tmp_path / "bad.jinja"))


@pytest.fixture(scope="module")
def setup(toks, tmp_path_factory):
    """Two saved tiny models (tokenizer with / without a chat template), RL prompts and SFT target data."""
    root = tmp_path_factory.mktemp("chat")
    dirs = {}
    for name, tok in zip(("chat", "plain"), toks):
        dirs[name] = root / name
        save_model(build_tiny_model("gpt2", tok, torch.float64, seed=0), tok, dirs[name])
    prompts = write_jsonl(root / "rl.jsonl", [{"id": p.id, "prompt": p.prompt, "answer": p.answer} for p in PROMPTS])
    target = write_jsonl(root / "target.jsonl", [{"id": "t", "prompt": "Knights", "response": "always tell the truth."}])
    (root / "t.jinja").write_text(FILE_TEMPLATE)
    return dirs, prompts, target, root


class Captured(SampleEffectError):
    pass


# command -> (module attribute the command calls with the prompts, where the prompts are in that call, extra argv)
COMMANDS = {
    "train-grpo": ("sample_effect.training.train_grpo", 2, []),
    "redistill": ("sample_effect.training.redistill", 2, []),
    "rft": ("sample_effect.training.imitation.run_rft", 2, ["--eval-prompts", "{prompts}"]),
    "distill": ("sample_effect.training.imitation.teacher_completions", 2, ["--teacher", "{model}"]),
    "predict-rl": ("sample_effect.growth.rl.predict_rl", 2, ["--target-data", "{target}"]),
    "validate rl-curves": ("sample_effect.validation.rl_curves.rl_curve", 2, ["--target-data", "{target}"]),
    "validate rl-starts": ("sample_effect.validation.rl_protocol.compare_starts", 1,
                           ["--model", "other={model}", "--eval-prompts", "{prompts}"]),
}


def _run(command: str, model: Path, setup, template: list[str], monkeypatch) -> list[str]:
    """Run `command` up to the library call that samples, and return the prompt texts it was given."""
    import importlib

    _, prompts, target, root = setup
    target_name, index, extra = COMMANDS[command]
    module, attr = target_name.rsplit(".", 1)
    seen: list[str] = []

    def capture(*args, **kwargs):
        seen.extend(p.prompt for p in args[index])
        raise Captured("captured")

    monkeypatch.setattr(importlib.import_module(module), attr, capture)
    argv = [*command.split(), "--model", str(model), "--prompts", str(prompts), "--out",
            str(root / ("o.json" if command in ("predict-rl", "validate rl-curves") else "run")), "--overwrite"]
    argv += [a.format(prompts=prompts, model=model, target=target) for a in extra]
    assert main([*argv, *template, "--device", "cpu"]) == 2
    return seen


@pytest.mark.parametrize("command", list(COMMANDS))
def test_commands_wrap_the_prompts_they_sample(command, setup, monkeypatch, capsys) -> None:
    dirs, *_, root = setup
    raw = [p.prompt for p in PROMPTS]
    assert _run(command, dirs["chat"], setup, [], monkeypatch) == raw  # default: none
    assert _run(command, dirs["chat"], setup, ["--chat-template", "none"], monkeypatch) == raw
    assert _run(command, dirs["chat"], setup, ["--chat-template", "auto"], monkeypatch) == [
        f"[user] {p}\n[assistant] " for p in raw]
    assert _run(command, dirs["plain"], setup, ["--chat-template"], monkeypatch) == raw  # bare = auto; no template
    assert _run(command, dirs["plain"], setup, ["--chat-template", str(root / "t.jinja")], monkeypatch) == [
        f"<<{p}>>=>" for p in raw]
    capsys.readouterr()


def test_missing_template_file_names_the_flag(setup, capsys) -> None:
    dirs, prompts, _, root = setup
    code = main(["train-grpo", "--model", str(dirs["chat"]), "--prompts", str(prompts), "--out", str(root / "x"),
                 "--chat-template", str(root / "nope.jinja")])
    err = capsys.readouterr().err
    assert code == 2 and "--chat-template must be auto, none or a Jinja template file" in err


def test_rl_starts_loss_examples_follow_the_templated_prompt(toks, tmp_path) -> None:
    """validate rl-starts' loss measurement: the eval prompts' solutions come after the prompt as it is sampled."""
    from sample_effect.cli.rl_starts import held_out_solutions
    from sample_effect.rollouts.generation import prompt_ids

    with_template, _ = toks
    f = write_jsonl(tmp_path / "held.jsonl", [{"id": p.id, "prompt": p.prompt, "answer": p.answer,
                                                "response": f"The answer is {p.answer}."} for p in PROMPTS])
    for template in ("none", "auto"):
        held = chat_template_prompts(PROMPTS, with_template, template)
        exs = held_out_solutions(None, str(f), held, with_template, None)
        assert [e.id for e in exs] == ["a", "b"]
        for e, p in zip(exs, held):  # the example's prompt tokens are the sampler's, exactly
            ids = prompt_ids(with_template, p.prompt)
            assert e.sequences[0][: len(ids)].tolist() == ids and e.response_starts[0] == len(ids)
    plain = write_jsonl(tmp_path / "plain.jsonl", [{"id": p.id, "prompt": p.prompt, "answer": p.answer} for p in PROMPTS])
    assert held_out_solutions(None, str(plain), PROMPTS, with_template, None) is None


def test_rank_wraps_its_target_prompts(setup, monkeypatch, capsys) -> None:
    """rank --target-prompts samples the held-out prompts: --chat-template applies to them too."""
    import sample_effect.targets.core as core

    dirs, prompts, target, root = setup
    seen: list[list[str]] = []

    def capture(**kwargs):
        seen.append([p.prompt for p in kwargs["prompts"]])
        raise Captured("captured")

    monkeypatch.setattr(core, "AccuracyTarget", capture)
    argv = ["rank", "--model", str(dirs["chat"]), "--data", str(target), "--target-prompts", str(prompts),
            "--reward", "exact", "--out", str(root / "r.csv"), "--overwrite", "--device", "cpu"]
    assert main(argv) == 2 and main([*argv, "--chat-template", "auto"]) == 2
    raw = [p.prompt for p in PROMPTS]
    assert seen == [raw, [f"[user] {p}\n[assistant] " for p in raw]]
    capsys.readouterr()
