"""One settings key for every on-disk result: a hash of everything the stored numbers depend on.

The scoring cache (`rank --cache-dir`) and the projection cache (`project` / `rank --projection`)
both name their runs by `settings_key`, so a result is only ever served under the settings it was
computed with: every model weight, the chosen parameter names and their dtype, the examples' tokens,
the `UpdateConfig`, the compute settings that change values, the optimiser state, the projection
and the target. Speed-only settings (batch size, memory budget, progress) are left out.

The optimiser state is hashed generically (`hash_value` walks dataclass fields, mappings, sequences,
tensors and plain values), so the key follows whatever the state holds without naming its fields.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from sample_effect.data.examples import TokenizedExample
from sample_effect.engine.core import ComputeConfig
from sample_effect.engine.vectors import TargetVector
from sample_effect.errors import SampleEffectError
from sample_effect.runtime.cpu import resolve_gemm_dtype
from sample_effect.update.optim import OptimizerState, UpdateConfig

KEY_FORMAT = 2
VALUE_SETTINGS = ("method", "grad_norms", "gemm_dtype")  # the ComputeConfig fields that change stored values


def hash_tensor(h: Any, t: torch.Tensor) -> None:
    """Feed a tensor's dtype, shape and raw bytes to the hash `h` (a hashlib object)."""
    t = t.detach().cpu().contiguous()
    h.update(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(t.view(-1).view(torch.uint8).numpy().tobytes())


def hash_examples(h: Any, examples: Sequence[TokenizedExample]) -> None:
    """Feed the examples' ids, response starts and token ids to the hash `h`."""
    h.update(f"n={len(examples)}".encode())
    for ex in examples:
        h.update(json.dumps([ex.id, ex.response_starts]).encode())
        for s in ex.sequences:
            h.update(s.numpy().astype(np.int64).tobytes())


def hash_value(h: Any, value: object) -> None:
    """Feed any state-like value to the hash `h`: dataclass fields, mappings, sequences, tensors, arrays, plain values.

    Generic on purpose: an optimiser state is keyed by what it holds, whatever its fields are called.
    """
    if isinstance(value, torch.Tensor):
        h.update(b"T")
        hash_tensor(h, value)
    elif isinstance(value, np.ndarray):
        h.update(b"A")
        hash_tensor(h, torch.from_numpy(np.ascontiguousarray(value)))
    elif value is None or isinstance(value, (bool, int, float, complex, str, bytes, enum.Enum)):
        h.update(f"{type(value).__name__}:{value!r};".encode())
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        h.update(f"D{type(value).__qualname__}(".encode())
        for f in dataclasses.fields(value):
            h.update(f"{f.name}=".encode())
            hash_value(h, getattr(value, f.name))
        h.update(b")")
    elif isinstance(value, Mapping):
        h.update(f"M{len(value)}{{".encode())
        for k in sorted(value, key=repr):
            hash_value(h, k)
            hash_value(h, value[k])
        h.update(b"}")
    elif isinstance(value, (list, tuple)):
        h.update(f"L{len(value)}[".encode())
        for v in value:
            hash_value(h, v)
        h.update(b"]")
    elif isinstance(value, (set, frozenset)):
        hash_value(h, sorted(value, key=repr))
    elif hasattr(value, "__dict__"):
        h.update(f"O{type(value).__qualname__}".encode())
        hash_value(h, vars(value))
    else:
        raise SampleEffectError(f"cannot key a setting of type {type(value).__name__}")


def vector_digest(g: TargetVector) -> bytes:
    """Digest of a resolved target (its kind and G), for keying results toward it."""
    h = hashlib.sha256(g.kind.encode())
    for n in sorted(g.vector):
        h.update(n.encode())
        hash_tensor(h, g.vector[n])
    return h.digest()


def settings_key(
    model: torch.nn.Module,
    params: Mapping[str, torch.Tensor],
    examples: Sequence[TokenizedExample],
    update: UpdateConfig,
    state: OptimizerState | None,
    compute: ComputeConfig,
    projection: object = None,
    target: bytes = b"",
) -> str:
    """Hash of everything a stored result depends on (see the module docstring); 32 hex digits.

    `state` None is the fresh optimiser (keyed as `OptimizerState()`); `projection` is the
    projection's config (a dataclass) or None; `target` a digest of the target (`vector_digest`, or
    what identifies an unresolved one), empty where the result does not depend on it.
    """
    h = hashlib.sha256(f"sample-effect settings {KEY_FORMAT}".encode())
    for n, p in model.named_parameters():
        h.update(n.encode())
        hash_tensor(h, p)
    h.update(json.dumps([list(params), str(next(iter(params.values())).dtype)]).encode())
    hash_examples(h, examples)
    hash_value(h, update)
    first = next(iter(params.values()))
    values = {k: getattr(compute, k) for k in VALUE_SETTINGS}
    values["gemm_dtype"] = resolve_gemm_dtype(compute.gemm_dtype, first.dtype, first.device)  # what ran, not 'auto'
    hash_value(h, values)
    hash_value(h, state if state is not None else OptimizerState())
    hash_value(h, projection)
    h.update(target)
    return h.hexdigest()[:32]
