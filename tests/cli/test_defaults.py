"""One set of defaults: every command's optimiser settings, read from its parser, are the trainer's config defaults
(GRPOConfig for the RL commands, SFTConfig for the SFT ones), and every command that loads a model requires --model."""

from __future__ import annotations

import argparse

import pytest

from sample_effect.cli.main import build_parser
from sample_effect.cli.options import (
    grpo_config_from_args,
    sft_config_from_args,
    update_config_from_args,
)
from sample_effect.training import GRPOConfig, SFTConfig

GRPO, SFT = GRPOConfig(), SFTConfig()


def parse(command: str, *extra: str) -> argparse.Namespace:
    """`command` with a placeholder for each required option, parsed (the defaults are what is asked about)."""
    parser = build_parser()
    for name in command.split():
        parser = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[name]
    argv = command.split()
    required = [a for a in parser._actions if a.required and a.option_strings]
    required += [g._group_actions[0] for g in parser._mutually_exclusive_groups if g.required]
    for a in required:
        n = a.nargs if isinstance(a.nargs, int) else 1
        argv += [a.option_strings[0], *[str(a.choices[0]) if a.choices else "1"] * n]
    return build_parser().parse_args([*argv, *extra])


def update_fields(update) -> tuple:
    return update.optimizer, update.lr, update.clip, update.weight_decay


@pytest.mark.parametrize("command", ["train-grpo", "validate rl-curves", "validate rl-starts", "reference-direction"])
def test_grpo_commands_use_grpo_config_defaults(command: str) -> None:
    cfg = grpo_config_from_args(parse(command))
    assert update_fields(cfg.update) == update_fields(GRPO.update)
    assert (cfg.prompts_per_step, cfg.group_size, cfg.clip_eps, cfg.temperature, cfg.max_new_tokens) == (
        GRPO.prompts_per_step, GRPO.group_size, GRPO.clip_eps, GRPO.temperature, GRPO.max_new_tokens)


def test_predict_rl_simulates_the_grpo_trainers_step() -> None:
    args = parse("predict-rl")
    assert update_fields(update_config_from_args(args)) == update_fields(GRPO.update) == ("adamw", 1e-5, 1.0, 0.0)
    assert (args.prompts_per_step, args.group_size, args.clip_eps, args.temperature, args.max_new_tokens) == (
        GRPO.prompts_per_step, GRPO.group_size, GRPO.clip_eps, GRPO.temperature, GRPO.max_new_tokens)


@pytest.mark.parametrize("command", ["train-sft", "predict-sft", "validate curves", "validate selection", "rft", "distill"])
def test_sft_commands_use_sft_config_defaults(command: str) -> None:
    cfg = sft_config_from_args(parse(command))
    assert update_fields(cfg.update) == update_fields(SFT.update)
    assert (cfg.batch_size, cfg.grad_accum, cfg.schedule, cfg.warmup_steps) == (
        SFT.batch_size, SFT.grad_accum, SFT.schedule, SFT.warmup_steps)


def test_predict_sft_and_lds_simulate_adamw_with_the_trainers_settings() -> None:
    assert parse("predict-sft").optimizer == SFT.update.optimizer
    lds = parse("validate lds")
    assert (lds.lr, lds.max_grad_norm, lds.weight_decay) == (SFT.update.lr, SFT.update.clip, SFT.update.weight_decay)


def test_redistill_finetune_defaults_are_sft_configs() -> None:
    args = parse("redistill")
    assert (args.lr, args.batch_size) == (SFT.update.lr, SFT.batch_size)


@pytest.mark.parametrize("command", ["rank", "project"])
def test_simulated_adamw_has_the_trainers_weight_decay(command: str, tmp_path) -> None:
    update = update_config_from_args(parse(command, "--optimizer", "adamw"))
    assert update.weight_decay == SFT.update.weight_decay == GRPO.update.weight_decay == 0.0
    assert update_config_from_args(parse(command, "--optimizer", "adamw", "--weight-decay", "0.01")).weight_decay == 0.01
    # with an optimizer state file, its own weight decay is used (None here: read from the file's param groups)
    args = parse(command, "--optimizer", "adamw", "--optimizer-state", str(tmp_path / "opt.pt"))
    assert update_config_from_args(args).weight_decay is None


@pytest.mark.parametrize("command", ["rank", "predict-rl", "train-grpo", "train-sft", "predict-sft", "rft", "distill",
                                     "redistill", "validate linearization", "validate curves", "validate selection"])
def test_help_states_the_defaults(command: str, capsys) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args([*command.split(), "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for flag in ("--lr", "--max-grad-norm", "--weight-decay"):
        if flag in text:
            after = text.split(flag, 2)[-1][:400]
            assert "default" in after, f"{command} {flag}"


@pytest.mark.parametrize("command", ["train-sft", "train-grpo", "redistill", "predict-sft", "validate curves",
                                     "validate selection", "validate linearization", "rft", "distill"])
def test_model_is_required(command: str, capsys) -> None:
    args = parse(command)
    assert args.model == "1"
    argv = [*command.split()]
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(argv)
    assert exc.value.code == 2
    assert "--model" in capsys.readouterr().err
