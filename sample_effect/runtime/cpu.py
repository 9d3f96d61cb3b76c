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
