"""Loading causal LMs for exact per-example maths, and choosing the parameters to score.

Models load with eager attention (SDPA breaks forward-mode AD and, with a mask, vmap), without a
KV cache, and in eval mode (dropout breaks vmap and makes gradients random).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

from sample_effect.errors import ConfigError, SampleEffectError, literal
from sample_effect.hub import hub_failure, hub_id, quiet_hf_progress

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float64": torch.float64,
    "bfloat16": torch.bfloat16,
}

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def parse_dtype(name: str | torch.dtype) -> torch.dtype:
    """Map a dtype name (float32, float64, bfloat16) to a torch dtype, with a clear error otherwise."""
    if isinstance(name, torch.dtype):
        if name in DTYPES.values():
            return name
        raise SampleEffectError(f"unsupported dtype {name}; choose one of {', '.join(DTYPES)}")
    if name not in DTYPES:
        raise SampleEffectError(f"unknown dtype '{name}'; choose one of {', '.join(DTYPES)}")
    return DTYPES[name]


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """Dtype for dot products and optimiser maths: float64 stays, everything else uses float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def check_model_dir(path: str | os.PathLike) -> Path:
    """Check that `path` looks like a saved Hugging Face causal LM (config and weights)."""
    p = Path(path)
    if not p.exists():
        raise SampleEffectError(f"model directory not found: {p}")
    if not p.is_dir():
        raise SampleEffectError(f"model path is not a directory: {p}")
    if not (p / "config.json").exists():
        raise SampleEffectError(f"model directory has no config.json: {p}")
    try:
        json.loads((p / "config.json").read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise SampleEffectError(f"{p / 'config.json'}: not valid JSON ({str(exc).splitlines()[0]})") from None
    if not any((p / f).exists() for f in WEIGHT_FILES):
        raise SampleEffectError(f"model directory has no weights ({' / '.join(WEIGHT_FILES[::2])}): {p}")
    return p


def load_tokenizer(path: str | os.PathLike) -> Any:
    """Load the tokenizer saved next to a model (or of a Hugging Face Hub id), with a clear error if there is none."""
    from transformers import AutoTokenizer

    p = Path(path)
    if p.is_dir() and not any((p / f).exists() for f in TOKENIZER_FILES):
        # transformers would build an empty tokenizer from config.json alone and every text would have no tokens
        raise SampleEffectError(f"could not load a tokenizer from {p}: no tokenizer files ({' / '.join(TOKENIZER_FILES[:2])}) in it")
    try:
        tok = AutoTokenizer.from_pretrained(str(path))
    except Exception as exc:  # transformers raises many types here
        repo = hub_id(path)
        if repo is not None:
            raise SampleEffectError(hub_failure(repo, "a tokenizer", exc)) from None
        raise SampleEffectError(f"could not load a tokenizer from {path}: {str(exc).splitlines()[0]}") from None
    if len(tok) < 2:
        raise SampleEffectError(f"could not load a tokenizer from {path}: its vocabulary is empty")
    return tok


def resolve_device(spec: str | torch.device | None = "auto", what: str = "device") -> torch.device:
    """The torch device of `spec`: auto (CUDA when available, else CPU), cpu, cuda, cuda:N or mps.

    Fails with a SampleEffectError naming `what` (e.g. the flag `--device`) when that device is not available here."""
    if spec is None or (isinstance(spec, str) and spec.strip().lower() == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if isinstance(spec, torch.device):
        dev = spec
    else:
        text = str(spec).strip().lower()
        if not re.fullmatch(r"cpu|mps|cuda(:\d+)?", text):
            raise SampleEffectError(f"{what} '{spec}': unknown device; choose auto, cpu, cuda, cuda:N or mps")
        dev = torch.device(text)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
            raise SampleEffectError(f"{what} {spec}: CUDA is not available on this machine (torch {torch.__version__}, "
                                    f"{build}); use {what} cpu, or auto to take CUDA only when there is one")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise SampleEffectError(f"{what} {spec}: there are only {torch.cuda.device_count()} CUDA device(s)")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise SampleEffectError(f"{what} {spec}: MPS (Apple GPU) is not available on this machine; use {what} cpu")
    return dev


def load_model(path: str | os.PathLike, dtype: str | torch.dtype = "float32", device: str | torch.device = "cpu") -> tuple[torch.nn.Module, Any]:
    """Load a causal LM and its tokenizer, ready for per-example maths, onto `device` (see `resolve_device`).

    `path` is a local model or PEFT adapter directory, a built-in name given as a string (tiny,
    tiny-small, smollm2) or a Hugging Face Hub id `org/name` (transformers' from_pretrained; with
    HF_HUB_OFFLINE=1 it is read from the local cache only)."""
    from transformers import AutoModelForCausalLM

    target = resolve_device(device)
    torch_dtype = parse_dtype(dtype)
    warn_emulated_bf16(torch_dtype, target)
    if isinstance(path, str):
        from sample_effect.models.registry import resolve_model

        path = resolve_model(path)  # a built-in name becomes its directory; a Hub id stays a string
    repo = hub_id(path) if isinstance(path, str) else None
    if repo is None:
        p = Path(path)
        if (p / "adapter_config.json").exists() and not (p / "config.json").exists():
            return _load_adapter_dir(p, dtype, target)
        source = str(check_model_dir(p))
    else:
        source = repo
    quiet_hf_progress()
    tokenizer = load_tokenizer(source)
    try:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype, attn_implementation="eager")
    except Exception as exc:
        if repo is not None:
            raise SampleEffectError(hub_failure(repo, "a causal LM", exc)) from None
        raise SampleEffectError(f"could not load a causal LM from {source}: {str(exc).splitlines()[0]}") from None
    prepare_model(model)
    return model.to(target), tokenizer


_BF16_WARNED: list[bool] = []


def warn_emulated_bf16(dtype: torch.dtype, device: torch.device) -> None:
    """Log, once per process and before any work, that bfloat16 on this CPU is emulated and slow (`runtime.cpu`)."""
    from sample_effect.runtime import cpu

    note = None if _BF16_WARNED else cpu.bf16_note(dtype, device)
    if note:
        _BF16_WARNED.append(True)
        logging.getLogger("sample_effect").warning(note)


def _load_adapter_dir(p: Path, dtype: str | torch.dtype, device: torch.device) -> tuple[torch.nn.Module, Any]:
    """A PEFT adapter directory: load its base model (adapter_config's base: a local directory or a Hub id), then the adapter."""
    import json

    from sample_effect.models.lora import load_adapter

    base_path = json.loads((p / "adapter_config.json").read_text()).get("base_model_name_or_path")
    if not base_path or not (Path(base_path).is_dir() or hub_id(base_path)):
        raise SampleEffectError(f"{p}: adapter_config.json names no local base model directory or Hub id ({base_path!r})")
    base, tokenizer = load_model(Path(base_path) if Path(base_path).is_dir() else str(base_path), dtype, device)
    if (p / "tokenizer_config.json").exists():
        tokenizer = load_tokenizer(p)
    return prepare_model(load_adapter(str(p), base)).to(device), tokenizer


def prepare_model(model: torch.nn.Module) -> torch.nn.Module:
    """Put an already-built model in the state the engine needs: eval mode, no KV cache, eager attention.

    A float64 model is also made float64 end to end (see `sample_effect.models.precision`).
    """
    from sample_effect.models.precision import make_float64_exact

    model.eval()
    config = getattr(model, "config", None)
    if config is not None:
        config.use_cache = False
        impl = getattr(config, "_attn_implementation", None)
        if impl not in (None, "eager") and hasattr(model, "set_attn_implementation"):
            model.set_attn_implementation("eager")
    return make_float64_exact(model)


def config_int(model: torch.nn.Module, *names: str, default: int) -> int:
    """The first integer among the model config's attributes `names` (e.g. n_positions), else `default`."""
    cfg = getattr(model, "config", None)
    for n in names:
        v = getattr(cfg, n, None)
        if isinstance(v, int):
            return v
    return default


def position_limit(model: torch.nn.Module) -> int:
    """Longest sequence the model accepts (0 if its config does not say)."""
    return config_int(model, "n_positions", "max_position_embeddings", default=0)


def select_parameters(model: torch.nn.Module, pattern: str | None = None) -> OrderedDict[str, torch.nn.Parameter]:
    """The trainable parameters to score, optionally filtered by a regex searched in each name.

    Frozen parameters (requires_grad=False) are never selected, so a LoRA-wrapped model scores its
    adapters only. Tied parameters appear once, under their first name.
    """
    try:
        rx = re.compile(pattern) if pattern else None
    except re.error as exc:
        raise ConfigError("select_parameters", f"<pattern> is not a valid regular expression: {literal(exc)}") from None
    chosen = OrderedDict(
        (n, p) for n, p in model.named_parameters() if p.requires_grad and (rx is None or rx.search(n))
    )
    if pattern and not chosen:
        raise ConfigError("select_parameters", f"no parameters match <pattern> '{literal(pattern)}'")
    if not chosen:
        raise SampleEffectError("no parameters are trainable")
    return chosen
