"""What the CPU at hand can do fast: its model, the GEMM-relevant flags (AVX2, AVX-512, AMX) and torch's build.

bfloat16 matrix products are fast only on CPUs with native bf16 instructions (AVX512-BF16 or AMX);
elsewhere PyTorch emulates them. Figures reported from two of this project's machines
(`benchmarks/real_model.py`, SmolLM2-135M shape, B 4, T 128, one thread; not re-measured here):
about 2 s per forward+backward in bf16 on a CPU with AMX, about 170 s on an AMD EPYC with AVX2
only, where float32 took about 10 s. `bf16_note` says so before any work is done.
"""

from __future__ import annotations

import logging
import os
import platform
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger("sample_effect")
NATIVE_BF16 = ("avx512_bf16", "amx_bf16")


def cpu_info(cpuinfo: str | None = None) -> dict[str, Any]:
    """The CPU's model name, its AVX2 / AVX-512 / AMX flags, the core count and torch's version and build."""
    if cpuinfo is None:
        p = Path("/proc/cpuinfo")
        cpuinfo = p.read_text() if p.exists() else ""
    lines = cpuinfo.splitlines()
    model = next((x.split(":", 1)[1].strip() for x in lines if x.startswith("model name")), platform.processor())
    flags = set(next((x.split(":", 1)[1].split() for x in lines if x.startswith("flags")), []))
    wanted = sorted(f for f in flags if f == "avx2" or f.startswith(("avx512", "amx")))
    return {"model": model, "flags": wanted, "cores": os.cpu_count(), "torch": torch.__version__,
            "torch_cuda": torch.version.cuda, "mkldnn": bool(torch.backends.mkldnn.is_available())}


def native_bf16(flags: list[str] | None = None) -> bool:
    """Whether this CPU multiplies bfloat16 natively (AVX512-BF16 or AMX); False when its flags are unknown."""
    return any(f in (flags if flags is not None else cpu_info()["flags"]) for f in NATIVE_BF16)


def bf16_note(dtype: torch.dtype, device: str | torch.device = "cpu", flags: list[str] | None = None) -> str | None:
    """A warning for bfloat16 on a CPU without native bf16 (None when there is nothing to say)."""
    if dtype != torch.bfloat16 or torch.device(device).type != "cpu":
        return None
    if native_bf16(flags):
        return None
    return ("bfloat16 on this CPU (no AVX512-BF16 or AMX) is emulated: on an AVX2-only CPU a bf16 forward+backward "
            "was reported about 80x slower than on a CPU with AMX and about 17x slower than float32; use --dtype "
            "float32 unless memory forces bf16")


NATIVE_FP16 = ("avx512_fp16", "amx_fp16")
_told: set[tuple[str, str, str]] = set()


def fast_narrow_gemm(dtype: torch.dtype, device: str | torch.device = "cpu", flags: list[str] | None = None) -> bool:
    """Whether matrix products in `dtype` (bfloat16 / float16) are fast on `device`: always on a GPU; on a CPU only
    with native instructions for that dtype (AVX512-BF16 or AMX for bf16, AVX512-FP16 or AMX-FP16 for fp16)."""
    if torch.device(device).type != "cpu":
        return True
    have = flags if flags is not None else cpu_info()["flags"]
    native = NATIVE_BF16 if dtype == torch.bfloat16 else NATIVE_FP16 if dtype == torch.float16 else ()
    return any(f in have for f in native)


def resolve_gemm_dtype(setting: str, dtype: torch.dtype, device: str | torch.device = "cpu",
                       flags: list[str] | None = None) -> str:
    """`ComputeConfig.gemm_dtype` made concrete: 'auto' is 'model' (GEMMs of a bf16 / fp16 model's factors in its
    own dtype) where `fast_narrow_gemm` says that is fast, else 'accumulate' (float32); the choice is logged once."""
    if setting != "auto":
        return setting
    if dtype not in (torch.bfloat16, torch.float16):
        return "model"  # nothing is narrow: the setting changes nothing
    choice = "model" if fast_narrow_gemm(dtype, device, flags) else "accumulate"
    key = (str(dtype), torch.device(device).type, choice)
    if key not in _told:
        _told.add(key)
        why = ("the device multiplies it natively" if choice == "model" else
               "this CPU has no native instructions for it, so float32 GEMMs are faster")
        log.info("gemm_dtype auto: %s factors multiplied in %s (%s)", str(dtype).removeprefix("torch."),
                 "their own dtype" if choice == "model" else "float32", why)
    return choice
