"""Scoring across processes: `torchrun --nproc_per_node N -m sample_effect rank ...`.

torchrun (or any launcher) sets WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; when
WORLD_SIZE > 1 the process group is initialised (gloo for CPU tensors, nccl when the model is on
CUDA), the scored examples are split into contiguous blocks, one per rank, a mean-loss target's
gradient is summed over ranks (each rank takes its block of the target set), and rank 0 gathers
every rank's effects and alone writes the output.
"""

from __future__ import annotations

import atexit
import os
from typing import Any

import torch

from sample_effect.errors import SampleEffectError


def world_size() -> int:
    """Number of processes from the launcher's WORLD_SIZE (1 when unset)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise SampleEffectError(f"WORLD_SIZE must be an integer, got '{os.environ['WORLD_SIZE']}'") from None


def is_distributed() -> bool:
    """True when launched as one of several processes (WORLD_SIZE > 1)."""
    return world_size() > 1


def rank() -> int:
    """This process's rank: the process group's when joined, else the launcher's RANK (0 when unset)."""
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else int(os.environ.get("RANK", "0"))


def init(device: torch.device) -> None:
    """Join the process group from the launcher's environment (no-op when already joined or not distributed)."""
    import torch.distributed as dist

    if not is_distributed() or dist.is_initialized():
        return
    if not dist.is_available():
        raise SampleEffectError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    missing = [v for v in ("RANK", "MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
    if missing:
        raise SampleEffectError(f"WORLD_SIZE > 1 but {', '.join(missing)} not set; launch with torchrun")
    backend = "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend)
    atexit.register(_leave)


def _leave() -> None:
    """Leave the process group at exit. Left to the interpreter's teardown, gloo's threads can abort
    the process ("terminate called without an active exception", SIGABRT) after its work is done."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def active() -> bool:
    """True when this process has joined a process group of several ranks (collectives must be called)."""
    import torch.distributed as dist

    return is_distributed() and dist.is_available() and dist.is_initialized()


def gather_blocks(n: int, local: dict[int, Any]) -> list[Any]:
    """Every rank's {index: value} for its block of range(n), merged into one list on every rank."""
    out: list[Any] = [None] * n
    for part in all_gather_objects(local):
        for i, v in part.items():
            out[i] = v
    missing = [i for i, v in enumerate(out) if v is None]
    if missing:
        raise SampleEffectError(f"distributed gather: no rank returned item {missing[0]}")
    return out


def block(n: int, r: int | None = None, w: int | None = None) -> range:
    """The contiguous block of range(n) that rank r of w handles (sizes differ by at most one)."""
    w = world_size() if w is None else w
    r = rank() if r is None else r
    return range(n * r // w, n * (r + 1) // w)


def _backend_device() -> torch.device:
    import torch.distributed as dist

    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def all_reduce_sum_(t: torch.Tensor) -> torch.Tensor:
    """Sum `t` over ranks, in place."""
    import torch.distributed as dist

    dev = _backend_device()
    buf = t if t.device == dev else t.to(dev)
    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    if buf is not t:
        t.copy_(buf)
    return t


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's `obj` (picklable), in rank order, on every rank."""
    import torch.distributed as dist

    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank `src`'s `obj` (picklable), on every rank."""
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_agree(flag: bool) -> bool:
    """True only if `flag` holds on every rank (so that all ranks take the same branch)."""
    t = torch.tensor([1.0 if flag else 0.0], dtype=torch.float64)
    import torch.distributed as dist

    dev = _backend_device()
    t = t.to(dev)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item() == 1.0)


def barrier() -> None:
    """Wait until every rank gets here (no-op when not in a process group)."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()
