"""Shared command-line options: the parser class, argument groups, validators, and the step from parsed
arguments to the library's config objects.

Every command module imports from here and from the public library API, never from another command
module, so the CLI has no import cycles. Heavy library modules (torch, transformers) are imported inside
the functions that need them, so `sample-effect --help`, `kk` and `plot` start fast.

Vocabulary, the same in every command:
- `--chunk-size N`: sequences per compute chunk (speed/memory only; never changes a result beyond float
  rounding). `--batch-size` always means a training batch, except as the deprecated spelling of
  `--chunk-size` in `rank`, `project` and `predict-rl`.
- `--max-grad-norm NORM`: gradient clipping to this norm, as `torch.nn.utils.clip_grad_norm_`;
  `--max-grad-norm 0` turns clipping off everywhere. `--clip` is its deprecated spelling where it
  existed (and keeps its old meaning there: in `rank`, `project`, `predict-rl` and `validate
  linearization`, `--clip 0` is an error, as before).
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from sample_effect.errors import SampleEffectError

if TYPE_CHECKING:
    from sample_effect.data.sources import DataFormat
    from sample_effect.engine.core import ComputeConfig
    from sample_effect.targets.core import AccuracyTarget
    from sample_effect.training import GRPOConfig, SFTConfig
    from sample_effect.update.optim import UpdateConfig

log = logging.getLogger("sample_effect")

PROG = "sample-effect"
TABLE_SUFFIXES = (".csv", ".parquet")
# The same as sample_effect.engine.projection.KINDS (a test checks): spelled here so that building the
# parser for --help does not import torch.
PROJECTION_KINDS = ("rademacher", "gaussian", "countsketch")
# The same as sample_effect.data.kk.STYLES (a test checks).
KK_STYLES = ("answer-only", "short-cot", "long-cot")
# The names of sample_effect.update's registered rules, update_rules(), in its order (a test checks):
# spelled here so that building the parser for --help does not import torch. Code asks the rule
# (`is_linear`, `needs_state`), never compares these names.
OPTIMIZERS = ("adam", "adamw", "lion", "sgd")

SubParsers = argparse._SubParsersAction  # the object `add_subparsers` returns (argparse has no public name)


# --------------------------------------------------------------------------------------------
# Parser, help and errors
# --------------------------------------------------------------------------------------------


class HelpFormatter(argparse.HelpFormatter):
    """Shows every option's default: appends '(default: X)' unless the help already states one."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "default" in text.lower() or not has_default(action):
            return text
        if not action.option_strings and action.nargs not in ("?", "*"):
            return text
        return f"{text} (default: %(default)s)" if text else "(default: %(default)s)"


# Config fields and function parameters whose flag is not `--` + the name with dashes (see `flag_for`).
FIELD_FLAGS = {
    ("SFTConfig", "max_steps"): "--steps",
    ("RLPredictConfig", "n_boot"): "--bootstrap",
    ("ComputeConfig", "batch_size"): "--chunk-size",
    ("AccuracyTarget", "n_samples"): "--target-samples",
    ("StabilityConfig", "resamples"): "--stability-resamples",
    ("StabilityConfig", "orders"): "--stability-orders",
    ("StabilityConfig", "checkpoints"): "--stability-checkpoints",
    ("StabilityConfig", "top_k"): "--stability-top-k",
    ("StabilityConfig", "seed"): "--stability-seed",
    ("generate_puzzles", "n_people"): "--people",
    ("generate_puzzles", "count"): "--n",
    ("select_parameters", "pattern"): "--params",
    ("apply_lora", "r"): "--lora-r",
    ("check_settings", "q"): "--quantile",
    ("parse_marker_sets", "specs"): "--markers",
    ("get_reward", "name"): "--reward",
    ("load_optimizer_state", "path"): "--optimizer-state",
    ("load_trainer_optimizer_state", "path"): "--optimizer-state",
    ("init_tiny_student", "source"): "--tokenizer-from",
    ("chat_template_prompts", "template"): "--chat-template",
}


def flag_for(owner: str, field: str) -> str:
    """The flag that sets config field (or function parameter) `owner.field`: how the CLI prints a ConfigError."""
    return FIELD_FLAGS.get((owner, field), "--" + field.replace("_", "-"))


def has_default(action: argparse.Action) -> bool:
    """Whether --help should show the action's default (not for None, store_true's False or SUPPRESS; 0 counts)."""
    d = action.default
    return not (d is None or d is False or d is argparse.SUPPRESS or d == [])


class CLIParser(argparse.ArgumentParser):
    """The parser of every command: defaults shown in --help, and usage errors as one line, exit 2."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        """One line `sample-effect: error: ...` (the guide's promise), not argparse's usage block."""
        self.exit(2, f"{PROG}: error: {message} (see `{self.prog} --help`)\n")


class _Spelled(argparse.Action):
    """Store the converted value and the spelling used; a deprecated spelling queues a warning."""

    def __init__(self, option_strings: Sequence[str], dest: str, deprecated: Sequence[str] = (), why: str = "",
                 **kwargs: Any) -> None:
        self.deprecated = tuple(deprecated)
        self.why = why
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        setattr(namespace, self.dest, values)
        setattr(namespace, f"{self.dest}_flag", option_string)
        if option_string in self.deprecated:
            note = f"{option_string} is deprecated here{self.why}; use {self.option_strings[0]}"
            notes = list(getattr(namespace, "deprecations", None) or [])
            if note not in notes:
                notes.append(note)
            namespace.deprecations = notes


def deprecation_notes(args: argparse.Namespace) -> list[str]:
    """The deprecated spellings this command line used, one message each."""
    return list(getattr(args, "deprecations", None) or [])


# --------------------------------------------------------------------------------------------
# Validators (argparse `type=`) and checks
# --------------------------------------------------------------------------------------------


def positive_int(text: str) -> int:
    """An integer >= 1 (argparse type)."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got '{text}'") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def nonneg_int(text: str) -> int:
    """An integer >= 0 (argparse type)."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got '{text}'") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {v}")
    return v


def clip_norm(text: str) -> float | None:
    """A clipping norm where 0 means no clipping (argparse type of the trainers' --max-grad-norm)."""
    v = float(text)
    return None if v == 0 else v


def require_parquet() -> None:
    """Fail early when a .parquet output is asked for and pyarrow is missing."""
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise SampleEffectError("writing .parquet needs pyarrow: pip install 'sample-effect[parquet]'") from None


def require_eos(tok: object, what: str) -> None:
    """Sampling stops at EOS; without one no completion can finish and every built-in reward is 0."""
    if getattr(tok, "eos_token_id", None) is None:
        raise SampleEffectError(
            f"the tokenizer of {what} has no EOS token, so a sampled completion can never finish "
            "(rewards would only see finished=False); use a tokenizer that defines eos_token"
        )


def check_json_outputs(out: str, overwrite: bool, suffixes: tuple[str, ...]) -> list[Path]:
    """--out X.json and the files written next to it (X.csv, X.png, ...), checked before any compute."""
    from sample_effect.io import check_output_path

    base = Path(out)
    if base.suffix.lower() != ".json":
        raise SampleEffectError(f"--out must end in .json, got '{base.name}'")
    paths = [base] + [base.with_suffix(s) for s in suffixes]
    for path in paths:
        check_output_path(path, overwrite)
    return paths


# --------------------------------------------------------------------------------------------
# Argument groups
# --------------------------------------------------------------------------------------------


def add_common_args(p: argparse.ArgumentParser) -> None:
    """--debug, --quiet, --overwrite and --log-level: every command has them."""
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    p.add_argument("--quiet", action="store_true", help="no progress bars, warnings only")
    p.add_argument("--overwrite", action="store_true", help="replace output files that already exist")
    p.add_argument("--log-level", default="warning", type=str.lower, choices=["debug", "info", "warning", "error"],
                   help="sample-effect's own log messages on stderr")


def add_data_format_args(p: argparse.ArgumentParser) -> None:
    """The format flags of every command that reads SFT data with --data (they apply to all its data flags)."""
    g = p.add_argument_group("data format (every SFT data flag of this command)")
    g.add_argument("--split", default=None, metavar="NAME",
                   help="split of a DatasetDict saved with save_to_disk or of a Hub dataset `org/name` (default: its only split)")
    g.add_argument("--id-field", default="id", metavar="NAME", help="column holding the example id (default id; "
                   "a Parquet file or dataset without it gets ids from 0-based row numbers)")
    g.add_argument("--prompt-field", default="prompt", metavar="NAME", help="column holding the prompt")
    g.add_argument("--response-field", default="response", metavar="NAME", help="column holding the response")
    g.add_argument("--messages-field", default="messages", metavar="NAME", help="column holding chat messages")


def add_chunk_size_arg(p: argparse.ArgumentParser, what: str = "most sequences per compute chunk") -> None:
    """--chunk-size (deprecated spelling --batch-size): the compute chunk, speed and memory only."""
    p.add_argument("--chunk-size", "--batch-size", dest="chunk_size", action=_Spelled, deprecated=("--batch-size",),
                   why=" (--batch-size is a training batch elsewhere)", type=positive_int, default=16, metavar="N",
                   help=f"{what} (speed/memory only); --batch-size is its deprecated spelling")


def add_max_grad_norm_arg(p: argparse.ArgumentParser, default: float | None, help_: str) -> None:
    """--max-grad-norm with --clip as its deprecated spelling (read it with `clip_from_args`)."""
    shown = "none (no clipping)" if default is None else f"{default:g}"
    p.add_argument("--max-grad-norm", "--clip", dest="max_grad_norm", action=_Spelled, deprecated=("--clip",),
                   type=float, default=default, metavar="NORM",
                   help=f"{help_}; 0 = no clipping (default: {shown}); --clip is its deprecated spelling")


def optimizer_names() -> str:
    """The registered optimisers as help-text prose: 'adam, adamw, lion or sgd'."""
    return ", ".join(OPTIMIZERS[:-1]) + " or " + OPTIMIZERS[-1]


def add_engine_args(p: argparse.ArgumentParser) -> None:
    """Arguments shared by every command that simulates optimiser steps on examples (rank, project)."""
    p.add_argument("--optimizer", default="sgd", help=f"simulated optimiser: {optimizer_names()}")
    p.add_argument("--lr", type=float, default=1e-5, help="learning rate (effects are per unit lr)")
    p.add_argument("--beta1", type=float, default=None, help="Adam beta1 (default: state file's, else 0.9)")
    p.add_argument("--beta2", type=float, default=None, help="Adam beta2 (default: state file's, else 0.999)")
    p.add_argument("--eps", type=float, default=None, help="Adam eps (default: state file's, else 1e-8)")
    p.add_argument("--weight-decay", type=float, default=None,
                   help="weight decay (default: the --optimizer-state file's, else 0 as the trainers)")
    p.add_argument("--optimizer-state", metavar="FILE|DIR",
                   help="torch.save of {'optimizer': opt.state_dict(), 'param_names': [...]}, or a transformers Trainer "
                   "checkpoint directory (its optimizer.pt) (default: fresh optimiser state)")
    add_max_grad_norm_arg(p, None, "per-example gradient clipping to this norm (as clip_grad_norm_)")
    p.add_argument("--params", default=None, metavar="REGEX",
                   help="score only trainable parameters whose name matches (default: all trainable parameters)")
    p.add_argument("--dtype", default="float32", help="float32, float64 or bfloat16 (float32 accumulation)")
    add_device_arg(p)
    p.add_argument("--max-length", type=positive_int, default=None,
                   help="truncate sequences from the right to this many tokens (default: no truncation)")
    add_chunk_size_arg(p, "most sequences per vmap/ghost chunk")
    p.add_argument("--memory-budget", default="4GB", help="memory budget for one chunk, e.g. 4GB")
    p.add_argument("--method", default="auto", choices=["auto", "ghost", "vmap", "jvp"],
                   help="engine path (same numbers, different speed): auto/ghost (per-layer factors from one batched "
                   "backward), vmap (reference), jvp (forward-mode; SGD without clipping only)")
    p.add_argument("--grad-norms", action="store_true",
                   help="fill the grad_norm column even when nothing needs it (SGD without clipping on the fast paths)")
    p.add_argument("--explain", action="store_true",
                   help="print the engine's plan (per-layer path, chunk size, expected peak memory) and exit")


def add_lora_args(p: argparse.ArgumentParser) -> None:
    """--lora-r/--lora-alpha/--lora-targets: wrap the model with fresh LoRA adapters (needs peft)."""
    p.add_argument("--lora-r", type=int, default=None,
                   help="wrap the model with LoRA adapters of this rank (needs peft; default: no LoRA)")
    p.add_argument("--lora-alpha", type=float, default=None, help="LoRA alpha (default 2 * r)")
    p.add_argument("--lora-targets", default=None, help="comma-separated module names (default: PEFT's per-architecture choice)")


def add_device_arg(p: argparse.ArgumentParser) -> None:
    """--device: where the models a command loads run; main() checks it (`resolve_device`) before any work."""
    p.add_argument("--device", default="auto", metavar="auto|cpu|cuda|cuda:N|mps",
                   help="where the model runs: auto (CUDA when available, else cpu), cpu, cuda, cuda:N or mps (default auto)")


def add_chat_template_arg(p: argparse.ArgumentParser) -> None:
    """--chat-template auto|none|FILE: the text RL prompts are sampled on (`rollouts.prompts.chat_template_prompts`)."""
    p.add_argument("--chat-template", nargs="?", const="auto", default="none", metavar="auto|none|FILE",
                   help="wrap each RL prompt as a user turn of a chat template before sampling: auto (the tokenizer's, if "
                   "it has one; also a bare --chat-template), none (the raw text) or a Jinja template FILE (default none)")


def add_model_args(p: argparse.ArgumentParser, lora: bool = True) -> None:
    """--model (required), --dtype, --device, --seed, and the LoRA flags when `lora`."""
    p.add_argument("--model", required=True, help="'tiny', 'smollm2', a local model or adapter directory, or a Hub id org/name")
    p.add_argument("--dtype", default="float32", help="float32 (default), float64 or bfloat16")
    add_device_arg(p)
    p.add_argument("--seed", type=int, default=0, help="seed of sampling, batch order and initialisation")
    if lora:
        add_lora_args(p)


def add_sft_schedule_args(p: argparse.ArgumentParser) -> None:
    """The SFT trainer's schedule (shared by train-sft, predict-sft, validate curves/selection, rft, distill)."""
    p.add_argument("--lr", type=float, default=1e-4, help="AdamW learning rate")
    p.add_argument("--schedule", default="constant", help="constant or cosine (after linear warmup)")
    p.add_argument("--warmup-steps", type=nonneg_int, default=0, help="linear warmup steps")
    p.add_argument("--batch-size", type=int, default=8, help="training batch: examples per micro-batch")
    p.add_argument("--grad-accum", type=int, default=1, help="micro-batches accumulated per optimiser step")
    p.add_argument("--max-grad-norm", type=clip_norm, default=1.0, metavar="NORM",
                   help="clip the batch gradient to this norm, as the trainer's clip_grad_norm_; 0 = no clipping "
                   "(default: 1.0, i.e. clipping is on)")
    p.add_argument("--epochs", type=float, default=1.0, help="passes over the data")
    p.add_argument("--steps", type=int, default=None, help="optimiser steps (overrides --epochs; default: from --epochs)")
    p.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay")


def add_grpo_schedule_args(p: argparse.ArgumentParser) -> None:
    """GRPO's sampling and optimiser settings (shared by train-grpo and validate rl-curves)."""
    p.add_argument("--steps", type=int, default=10, help="GRPO optimiser steps")
    p.add_argument("--prompts-per-step", type=int, default=8, help="prompts (groups) per step")
    p.add_argument("--group-size", type=int, default=8, help="rollouts per prompt")
    p.add_argument("--temperature", type=float, default=1.0, help="rollout sampling temperature")
    p.add_argument("--max-new-tokens", type=int, default=256, help="longest rollout")
    p.add_argument("--clip-eps", type=float, default=0.2, help="GRPO ratio clip epsilon")
    p.add_argument("--lr", type=float, default=1e-5, help="AdamW learning rate")
    p.add_argument("--max-grad-norm", type=clip_norm, default=1.0, metavar="NORM",
                   help="clip the batch gradient to this norm, as clip_grad_norm_; 0 = no clipping (default: 1.0)")
    p.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay")
    p.add_argument("--schedule", default="constant", help="constant or cosine (after linear warmup)")
    p.add_argument("--warmup-steps", type=nonneg_int, default=0, help="linear warmup steps")


# The target flags: what G is. A command accepts some of these kinds (`add_target_args`).
TARGET_FLAGS = {"data": "--target-data", "self": "--target", "direction": "--direction", "prompts": "--target-prompts"}
TARGET_HELP = {
    "data": "G = -grad of the mean loss over this SFT data (same formats as --data)",
    "self": "'self': G = -grad of the mean loss over --data itself",
    "direction": "G = theta_FINAL - theta_BASE (checkpoint dirs)",
    "prompts": "G = grad of test accuracy on these RL prompts (REINFORCE)",
    "normalize": "with --direction: scale G to unit norm",
}


def add_target_args(p: argparse.ArgumentParser, kinds: Sequence[str] = ("data",), *, required: bool = True,
                    exclusive: bool | None = None, normalize: bool | None = None, accuracy_prefix: str | None = None,
                    metavar: str | None = "FILE", helps: dict[str, str] | None = None) -> None:
    """The flags that choose the target G, declared once for every command: one flag per kind in `kinds`
    (TARGET_FLAGS), --normalize with --direction, and the accuracy target's options with --target-prompts.

    Commands differ in which kinds they take, whether one is `required`, whether the kinds form a
    mutually exclusive group (`exclusive`, default: when there are several), whether --direction comes
    with --normalize (default: yes), the accuracy options' prefix (see `add_accuracy_target_args`),
    the metavar of --target-data and `helps` (per kind, replacing TARGET_HELP's). Read them back with
    `target_examples_from_args`, `check_target_args` and `target_from_args`.
    """
    unknown = [k for k in kinds if k not in TARGET_FLAGS]
    if unknown:
        raise ValueError(f"unknown target kind {unknown[0]!r}; choose from {', '.join(TARGET_FLAGS)}")
    text = {**TARGET_HELP, **(helps or {})}
    group = len(kinds) > 1 if exclusive is None else exclusive
    g: Any = p.add_mutually_exclusive_group(required=required) if group else p
    req = {} if group else {"required": required}
    if "data" in kinds:
        g.add_argument("--target-data", metavar=metavar, help=text["data"], **req)
    if "self" in kinds:
        g.add_argument("--target", choices=["self"], help=text["self"], **req)
    if "direction" in kinds:
        g.add_argument("--direction", nargs=2, metavar=("BASE", "FINAL"), help=text["direction"], **req)
    if "prompts" in kinds:
        g.add_argument("--target-prompts", metavar="FILE", help=text["prompts"], **req)
    if "direction" in kinds and normalize is not False:
        p.add_argument("--normalize", action="store_true", help=text["normalize"])
    if "prompts" in kinds:
        add_accuracy_target_args(p, prefix=accuracy_prefix or "")


def add_measurement_arg(p: argparse.ArgumentParser) -> None:
    """`validate rl-starts`' --target: which measured growth (and matching sample-effect target) judges the starts."""
    p.add_argument("--target", default="accuracy", metavar="accuracy|direction|loss",
                   help="what 'growth' means, comma-separated, the first one primary: accuracy (sampled held-out "
                   "accuracy), direction (<theta_k - theta_0, d>, exact), loss (minus the held-out loss of correct "
                   "solutions) (default accuracy)")


def add_accuracy_target_args(p: argparse.ArgumentParser, prefix: str = "") -> None:
    """Options of the accuracy target (besides --target-prompts): samples, baseline, temperature, seed, length.

    prefix "" (rank): --temperature, --seed, --max-new-tokens and --reward are the target's own;
    prefix "target-" (predict-rl): --target-temperature etc., defaulting to the rollouts' settings.
    """
    own = prefix == ""
    p.add_argument("--target-samples", type=int, default=8, metavar="N",
                   help="accuracy target: completions sampled per test prompt")
    p.add_argument("--baseline", default="loo", choices=["loo", "none"],
                   help="accuracy target: REINFORCE baseline, per-prompt leave-one-out mean (default) or none")
    p.add_argument(f"--{prefix}temperature", type=float, default=1.0 if own else None,
                   help="accuracy target: sampling temperature; G is the gradient of the accuracy at this temperature"
                   + ("" if own else " (default: --temperature)"))
    p.add_argument(f"--{prefix}seed", type=int, default=0 if own else None,
                   help="accuracy target: sampling seed" + ("" if own else " (default: --seed + 1, independent of the rollouts)"))
    p.add_argument(f"--{prefix}max-new-tokens", type=int, default=256 if own else None,
                   help="accuracy target: longest completion" + ("" if own else " (default: --max-new-tokens)"))
    if own:
        p.add_argument("--reward", default="kk", help="accuracy target: reward, kk, kk-partial, exact, boxed or module:function")


def add_cache_args(p: argparse.ArgumentParser) -> None:
    """rank's --cache-dir, --resume and --shard-size."""
    p.add_argument("--cache-dir", metavar="DIR", help="write per-chunk result shards under DIR/<settings hash>/ and "
                   "skip the ones a previous run with the same settings finished (resumable; default: no cache)")
    p.add_argument("--resume", action="store_true",
                   help="with --cache-dir: require a previous run with these exact settings to continue from")
    p.add_argument("--shard-size", type=int, default=256, metavar="N", help="examples per cache shard")


# --------------------------------------------------------------------------------------------
# Parsed arguments -> library objects
# --------------------------------------------------------------------------------------------


def data_format_from_args(args: argparse.Namespace) -> DataFormat:
    """The DataFormat the command line asks for (defaults where a command has no such flags)."""
    from dataclasses import fields

    from sample_effect.data.sources import DataFormat, FieldNames

    defaults = FieldNames()
    names = FieldNames(**{f.name: getattr(args, f"{f.name}_field", None) or getattr(defaults, f.name) for f in fields(FieldNames)})
    if len(set(vars(names).values())) != 4:
        raise SampleEffectError("--id-field, --prompt-field, --response-field and --messages-field must be different columns")
    split = getattr(args, "split", None)
    return DataFormat(fields=names, split=split if isinstance(split, str) else None)


def clip_from_args(args: argparse.Namespace, clip_zero_is_off: bool = False) -> float | None:
    """The clipping norm of --max-grad-norm (None = off; 0 = off). Its deprecated spelling --clip keeps its
    old meaning: off at 0 only where `clip_zero_is_off`, else a bad value for the library to report."""
    value = getattr(args, "max_grad_norm", None)
    flag = getattr(args, "max_grad_norm_flag", None) or "--max-grad-norm"
    if value is None or (value == 0 and (flag == "--max-grad-norm" or clip_zero_is_off)):
        return None
    if flag != "--max-grad-norm":
        return value  # UpdateConfig.validate names --clip in its error, as it always has
    if not (math.isfinite(value) and value > 0):
        raise SampleEffectError(f"--max-grad-norm must be a positive number (0 = no clipping), got {value}")
    return value


def update_config_from_args(args: argparse.Namespace) -> UpdateConfig:
    """The simulated update (--optimizer/--lr/--beta1/--beta2/--eps/--weight-decay/--max-grad-norm), validated."""
    from sample_effect.update.optim import UpdateConfig

    update = UpdateConfig(  # weight decay: the state file's, else the trainers' 0
        optimizer=args.optimizer.lower(), lr=args.lr, beta1=args.beta1, beta2=args.beta2, eps=args.eps, clip=clip_from_args(args),
        weight_decay=0.0 if args.weight_decay is None and not args.optimizer_state else args.weight_decay,
    ).validate()
    if args.optimizer_state and not update.rule.needs_state:
        raise SampleEffectError("--optimizer-state holds Adam moments; use --optimizer adam or adamw with it")
    return update


def memory_budget_from_args(args: argparse.Namespace) -> int | None:
    """--memory-budget in bytes, with the flag named in the error."""
    from sample_effect.engine.core import parse_bytes

    try:
        return parse_bytes(args.memory_budget)
    except SampleEffectError as exc:
        raise SampleEffectError(f"--memory-budget: {exc}") from None


def engine_configs_from_args(args: argparse.Namespace) -> tuple[UpdateConfig, ComputeConfig]:
    """UpdateConfig and ComputeConfig from `add_engine_args`' arguments, validated."""
    from sample_effect.engine.core import ComputeConfig

    update = update_config_from_args(args)
    budget = memory_budget_from_args(args)
    compute = ComputeConfig(batch_size=args.chunk_size, memory_budget=budget, progress=not args.quiet, method=args.method,
                            grad_norms=args.grad_norms)
    if args.method == "jvp" and (not update.rule.is_linear or update.clip is not None):
        raise SampleEffectError("--method jvp computes SGD effects without clipping (--max-grad-norm) only")
    return update, compute


def sft_config_from_args(args: argparse.Namespace, **extra: Any) -> SFTConfig:
    """SFTConfig from add_sft_schedule_args' arguments (plus trainer-only settings), validated."""
    from sample_effect.training import SFTConfig
    from sample_effect.training.common import adamw_update

    return SFTConfig(
        update=adamw_update(args.lr, args.max_grad_norm, args.weight_decay), schedule=args.schedule,
        warmup_steps=args.warmup_steps, batch_size=args.batch_size, grad_accum=args.grad_accum, epochs=args.epochs,
        max_steps=args.steps, seed=args.seed, **extra,
    ).validate()


def grpo_config_from_args(args: argparse.Namespace, **extra: Any) -> GRPOConfig:
    """The validated GRPOConfig of `add_grpo_schedule_args`' options, --eval-every and --seed, plus `extra` fields."""
    from sample_effect.training import GRPOConfig
    from sample_effect.training.common import adamw_update

    return GRPOConfig(
        update=adamw_update(args.lr, args.max_grad_norm, args.weight_decay), steps=args.steps,
        prompts_per_step=args.prompts_per_step, group_size=args.group_size, temperature=args.temperature,
        max_new_tokens=args.max_new_tokens, clip_eps=args.clip_eps, schedule=args.schedule,
        warmup_steps=args.warmup_steps, eval_every=args.eval_every, seed=args.seed, **extra,
    ).validate()


def load_model_from_args(args: argparse.Namespace, spec: str | None = None) -> tuple[Any, Any]:
    """Load --model (or `spec`) as (model, tokenizer), wrapped with LoRA when --lora-r is given."""
    from sample_effect.models.loading import load_model
    from sample_effect.models.registry import resolve_model

    model, tok = load_model(resolve_model(spec or args.model), args.dtype, getattr(args, "device", "cpu"))
    if getattr(args, "lora_r", None) and spec is None:
        from sample_effect.models.lora import apply_lora

        targets = [t for t in args.lora_targets.split(",") if t] if args.lora_targets else None
        model = apply_lora(model, args.lora_r, args.lora_alpha, targets)
    return model, tok


def accuracy_target_from_args(args: argparse.Namespace, tokenizer: Any, prefix: str = "") -> AccuracyTarget:
    """Build the AccuracyTarget of --target-prompts from parsed options (see `add_accuracy_target_args`)."""
    from sample_effect.rollouts.prompts import load_rl_prompts
    from sample_effect.rollouts.rewards import get_reward
    from sample_effect.targets.core import AccuracyTarget

    def opt(name: str, fallback: Any) -> Any:
        v = getattr(args, f"{prefix}{name}".replace("-", "_"))
        return fallback if v is None else v

    temperature = opt("temperature", getattr(args, "temperature", 1.0))
    seed = opt("seed", getattr(args, "seed", 0) + 1)
    max_new = opt("max-new-tokens", getattr(args, "max_new_tokens", 256))
    if not (temperature > 0 and math.isfinite(temperature)):
        raise SampleEffectError(f"--{prefix}temperature must be positive for the accuracy target, got {temperature}")
    if max_new < 1:
        raise SampleEffectError(f"--{prefix}max-new-tokens must be >= 1, got {max_new}")
    from sample_effect.rollouts.prompts import chat_template_prompts

    prompts = chat_template_prompts(load_rl_prompts(args.target_prompts), tokenizer, getattr(args, "chat_template", "none"))
    return AccuracyTarget(
        prompts=prompts, reward=get_reward(args.reward), tokenizer=tokenizer,
        n_samples=args.target_samples, temperature=temperature, seed=seed, max_new_tokens=max_new, baseline=args.baseline,
    )


def target_examples_from_args(args: argparse.Namespace) -> list | None:
    """The examples of --target-data in the command's data format, or None without it."""
    from sample_effect.data.examples import load_examples

    path = getattr(args, "target_data", None)
    return load_examples(path, data_format=data_format_from_args(args)) if path else None


def check_target_args(args: argparse.Namespace) -> None:
    """The target flags' own consistency, checked before any compute: --normalize needs --direction."""
    if getattr(args, "normalize", False) and not getattr(args, "direction", None):
        raise SampleEffectError("--normalize only applies to --direction")


def target_from_args(args: argparse.Namespace, tokenizer: Any, target_raw: Any, accuracy_prefix: str | None = "") -> Any:
    """The target a command's flags (`add_target_args`) name: --target-data (already loaded as `target_raw`),
    --target self, --direction, or --target-prompts (when `accuracy_prefix` is not None); None if none is given."""
    from sample_effect.data.examples import tokenize_examples
    from sample_effect.targets.core import DirectionTarget, LossTarget, SelfTarget

    if getattr(args, "target", None) == "self":
        return SelfTarget()
    if target_raw is not None:
        tokenized, report = tokenize_examples(target_raw, tokenizer, args.max_length)
        if report.n_truncated:
            log.warning("%d sequence(s) of --target-data truncated to --max-length %d", report.n_truncated, args.max_length)
        return LossTarget(tokenized)
    if getattr(args, "direction", None):
        return DirectionTarget(args.direction[0], args.direction[1], normalize=getattr(args, "normalize", False))
    if accuracy_prefix is not None and getattr(args, "target_prompts", None):
        return accuracy_target_from_args(args, tokenizer, prefix=accuracy_prefix)
    return None


def print_deprecations(args: argparse.Namespace) -> None:
    """One `sample-effect: warning:` line per deprecated spelling used (stderr)."""
    for note in deprecation_notes(args):
        print(f"{PROG}: warning: {note}", file=sys.stderr)
