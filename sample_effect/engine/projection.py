"""Random projections of per-example updates, cached on disk and scored against any number of targets.

Each example's simulated update per unit lr d(s) (clipped, optimiser-transformed, exactly what the
effect uses) is projected to k dimensions, P d(s), with P a k x n_params matrix of independent
Rademacher (+-1/sqrt(k)) or Gaussian (N(0, 1/k)) entries (Johnson-Lindenstrauss; TRAK, Park et al.
2023; LESS, Xia et al. 2024), or a CountSketch (each coordinate added with a random sign to one
random bucket; Charikar et al. 2002), which costs O(n_params) per example instead of
O(k n_params) and whose generation is k times cheaper; all three have E[P^T P] = I. P is never stored: it is regenerated block by block from a seed, per
parameter and per block of its elements. Since E[P^T P] = I, <P d, P G> is an unbiased estimate of
e(s) = <d, G>, with relative error ~ 1/sqrt(k); the projections are written once and scored
against any target G afterwards without recomputing gradients.

This module is the matrix P (`ProjectionConfig`, `project_rows`, `project_vector`); the projected
shards on disk are `sample_effect.store.projection`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch

from sample_effect.errors import ConfigError, SampleEffectError

KINDS = ("rademacher", "gaussian", "countsketch")
BLOCK_ELEMENTS = 2**16  # parameter elements per generated block of P (a [block, k] matrix)


@dataclass
class ProjectionConfig:
    """k (dim), the distribution of P's entries and its seed; the same settings give the same P."""

    dim: int = 256
    kind: str = "rademacher"
    seed: int = 0

    def validate(self) -> ProjectionConfig:
        """Raise SampleEffectError on any out-of-range setting; return self."""
        if self.dim < 1:
            raise ConfigError("ProjectionConfig", f"<dim> must be >= 1, got {self.dim}")
        if self.kind not in KINDS:
            raise SampleEffectError(f"unknown projection '{self.kind}'; choose {' or '.join(KINDS)}")
        return self


def _generator(cfg: ProjectionConfig, index: int, block: int) -> torch.Generator:
    seed = int.from_bytes(hashlib.sha256(f"{cfg.seed}/{index}/{block}".encode()).digest()[:8], "little") >> 1
    return torch.Generator(device="cpu").manual_seed(seed)


def _sketch(index: int, numel: int, cfg: ProjectionConfig, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """CountSketch of one block: bucket h(j) in [0, k) and sign s(j) = +-1 for each element (P[h(j), j] = s(j))."""
    start = block * BLOCK_ELEMENTS
    n = min(numel, start + BLOCK_ELEMENTS) - start
    gen = _generator(cfg, index, block)
    return torch.randint(0, cfg.dim, (n,), generator=gen), torch.randint(0, 2, (n,), generator=gen) * 2 - 1


def _blocks(index: int, numel: int, cfg: ProjectionConfig, dtype: torch.dtype, device: torch.device) -> Iterator[tuple[int, int, torch.Tensor]]:
    """(start, stop, P block [stop - start, k]) over one parameter's flattened elements, regenerated from the seed."""
    for b, start in enumerate(range(0, numel, BLOCK_ELEMENTS)):
        stop = min(numel, start + BLOCK_ELEMENTS)
        gen = _generator(cfg, index, b)
        if cfg.kind == "countsketch":
            h, sign = _sketch(index, numel, cfg, b)
            block = torch.zeros(stop - start, cfg.dim, dtype=dtype)
            block[torch.arange(stop - start), h] = sign.to(dtype)
            yield start, stop, block.to(device)
            continue
        if cfg.kind == "rademacher":
            block = torch.randint(0, 2, (stop - start, cfg.dim), generator=gen, dtype=torch.int8).to(dtype).mul_(2).sub_(1)
        else:
            block = torch.randn(stop - start, cfg.dim, generator=gen, dtype=torch.float64).to(dtype)
        yield start, stop, block.mul_(cfg.dim**-0.5).to(device)


def project_rows(rows: torch.Tensor, index: int, cfg: ProjectionConfig) -> torch.Tensor:
    """P_index @ row for every row of `rows` [e, numel] of parameter number `index`: [e, k]."""
    flat = rows.reshape(rows.shape[0], -1)
    out = torch.zeros(flat.shape[0], cfg.dim, dtype=flat.dtype, device=flat.device)
    if cfg.kind == "countsketch":  # O(numel) per row: scatter each element into its bucket with its sign
        for b, start in enumerate(range(0, flat.shape[1], BLOCK_ELEMENTS)):
            h, sign = _sketch(index, flat.shape[1], cfg, b)
            part = flat[:, start : start + len(h)] * sign.to(device=flat.device, dtype=flat.dtype)
            out.index_add_(1, h.to(flat.device), part)
        return out
    for start, stop, block in _blocks(index, flat.shape[1], cfg, flat.dtype, flat.device):
        out += flat[:, start:stop] @ block
    return out


def project_vector(vector: Mapping[str, torch.Tensor], names: Sequence[str], cfg: ProjectionConfig) -> torch.Tensor:
    """P G for a vector given per parameter name (the names in the cache's order): [k]."""
    missing = [n for n in names if n not in vector]
    if missing:
        raise SampleEffectError(f"the target has no values for cached parameter '{missing[0]}'")
    return sum(project_rows(vector[n][None], i, cfg)[0] for i, n in enumerate(names))  # type: ignore[return-value]
