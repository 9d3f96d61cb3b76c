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

Cache layout (a directory): `manifest.json` (settings, parameter list, shards) and shards
`shard-00000.safetensors` with tensors `proj` [n, k] (float32) and `loss` [n], and the example ids
in the shard's metadata. Every file is written atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from sample_effect.data.examples import TokenizedExample
from sample_effect.engine.core import ComputeConfig, iter_example_factors
from sample_effect.engine.keys import settings_key
from sample_effect.errors import ConfigError, SampleEffectError
from sample_effect.io import atomic_path
from sample_effect.kernels.ghost import materialise_sum
from sample_effect.update.optim import (
    OptimizerState,
    UpdateConfig,
    clip_coefficients,
    update_per_lr,
)

KINDS = ("rademacher", "gaussian", "countsketch")
BLOCK_ELEMENTS = 2**16  # parameter elements per generated block of P (a [block, k] matrix)
FORMAT = 1


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


def project_examples(
    model: torch.nn.Module,
    params: Mapping[str, torch.Tensor],
    examples: Sequence[TokenizedExample],
    out_dir: str | os.PathLike,
    update: UpdateConfig,
    cfg: ProjectionConfig,
    state: OptimizerState | None = None,
    compute: ComputeConfig | None = None,
    extra: Mapping[str, object] | None = None,
) -> dict:
    """Write P d(s) for every example as shards under `out_dir`, one shard per engine chunk; return the manifest.

    A directory that already holds a manifest with the same settings key is resumed: shards listed
    there are kept and only the rest is computed. A different key is an error (never mixed).
    """
    from safetensors.torch import save_file

    update.validate()
    cfg.validate()
    compute = compute or ComputeConfig()
    state = state or OptimizerState()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    key = settings_key(model, params, examples, update, state, compute, cfg)
    manifest_path = out / "manifest.json"
    names = list(params)
    manifest = {
        "format": FORMAT, "key": key, "projection": asdict(cfg), "update": asdict(update), "params": names,
        "n_examples": len(examples), "shards": [], **(extra or {}),
    }
    if manifest_path.exists():
        old = json.loads(manifest_path.read_text())
        if old.get("key") != key:
            raise SampleEffectError(
                f"{out} holds projections made with other settings (weights, data, update, optimiser state or "
                "projection); "
                "use another directory or delete it"
            )
        manifest["shards"] = [s for s in old["shards"] if (out / s["file"]).exists()]
    hypers = {n: state.hyper(n, update) for n in names}
    index = {n: i for i, n in enumerate(names)}
    todo = _remaining(examples, manifest["shards"])
    sub = [examples[i] for i in todo]
    for batch in iter_example_factors(model, params, sub, compute, desc="projections") if sub else []:
        original = [todo[i] for i in batch.indices]
        n_ex = len(batch.indices)
        acc = batch.losses.dtype
        coef = None
        if update.clip is not None:
            sq = sum(materialise_sum(fs).flatten(1).pow(2).sum(1) for fs in batch.factors.values())
            coef = clip_coefficients(sq, update.clip)  # type: ignore[arg-type]
        proj = torch.zeros(n_ex, cfg.dim, dtype=acc, device=batch.losses.device)
        for name, fs in batch.factors.items():
            g = materialise_sum(fs)
            if coef is not None:
                g = g * coef.view(-1, *([1] * (g.dim() - 1)))
            p = params[name].detach().to(acc)
            d = update_per_lr(g, p, update, hypers[name], state.exp_avg.get(name), state.exp_avg_sq.get(name),
                              state.step.get(name, 0.0))
            proj += project_rows(d, index[name], cfg)
        fname = f"shard-{original[0]:08d}.safetensors"
        ids = [examples[i].id for i in original]
        with atomic_path(out / fname) as tmp:
            save_file({"proj": proj.float().cpu().contiguous(), "loss": batch.losses.double().cpu().contiguous()},
                      str(tmp), metadata={"ids": json.dumps(ids)})
        manifest["shards"].append({"file": fname, "indices": original})
        manifest["shards"].sort(key=lambda s: s["indices"][0])
        _write_manifest(manifest_path, manifest)
    _write_manifest(manifest_path, manifest)
    return manifest


def _remaining(examples: Sequence[TokenizedExample], shards: Sequence[dict]) -> list[int]:
    """Indices of the examples no finished shard holds."""
    done = {i for sh in shards for i in sh["indices"]}
    return [i for i in range(len(examples)) if i not in done]


def _write_manifest(path: Path, manifest: dict) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(manifest, indent=1) + "\n")


@dataclass
class ProjectionCache:
    """A finished projection directory loaded into memory."""

    ids: list[str]
    proj: torch.Tensor
    loss: np.ndarray
    manifest: dict

    @property
    def config(self) -> ProjectionConfig:
        """The projection these shards were written with (dim, kind, seed), read from the manifest."""
        return ProjectionConfig(**self.manifest["projection"])

    def scores(self, target: Mapping[str, torch.Tensor]) -> np.ndarray:
        """Estimated e(s) = <P d(s), P G> for every cached example, in the cached order."""
        pg = project_vector(target, self.manifest["params"], self.config).float().cpu()
        return (self.proj @ pg).double().numpy()


def load_projection(path: str | os.PathLike) -> ProjectionCache:
    """Read a projection directory; errors if it is incomplete or not one."""
    from safetensors import safe_open

    d = Path(path)
    mp = d / "manifest.json"
    if not mp.exists():
        raise SampleEffectError(f"{d} is not a projection cache (no manifest.json)")
    manifest = json.loads(mp.read_text())
    n = manifest["n_examples"]
    held = sum(len(s["indices"]) for s in manifest["shards"])
    if held != n:
        raise SampleEffectError(f"{d} holds {held} of {n} examples; re-run the same `project` command to finish it")
    ids = [""] * n
    proj = torch.zeros(n, manifest["projection"]["dim"])
    loss = np.zeros(n)
    for s in manifest["shards"]:
        f = d / s["file"]
        if not f.exists():
            raise SampleEffectError(f"{d}: shard {s['file']} listed in the manifest is missing; re-run `project` to resume")
        with safe_open(str(f), framework="pt") as fh:
            idx = s["indices"]
            for i, name in zip(idx, json.loads(fh.metadata()["ids"])):
                ids[i] = name
            proj[idx] = fh.get_tensor("proj")
            loss[idx] = fh.get_tensor("loss").numpy()
    return ProjectionCache(ids, proj, loss, manifest)
