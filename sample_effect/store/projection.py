"""Projected shards on disk: `sample-effect project` writes them, `rank --projection` scores them.

Each example's simulated update per unit lr d(s), formed by the engine's ghost Backend (clipped,
optimiser-transformed, exactly what the effect uses), is projected with the seeded matrix P of
`sample_effect.engine.projection` and written once; any target G is scored afterwards as
<P d(s), P G> without recomputing gradients.

Cache layout (a directory): `manifest.json` (settings key, projection, parameter list, shards) and
shards `shard-00000.safetensors` with tensors `proj` [n, k] (float32) and `loss` [n], and the example
ids in the shard's metadata. Every file is written atomically. The key is the one
`sample_effect.engine.keys.settings_key` (weights, data, update, optimiser state, value-changing
compute settings, projection), so shards are never served under other settings.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from sample_effect.data.examples import TokenizedExample
from sample_effect.engine.backends import BatchEffects, UpdateRows
from sample_effect.engine.core import ComputeConfig
from sample_effect.engine.projection import ProjectionConfig, project_rows, project_vector
from sample_effect.engine.vectors import TargetVector
from sample_effect.errors import SampleEffectError
from sample_effect.io import atomic_path
from sample_effect.scoring.result import Effects
from sample_effect.scoring.run import Output, ScoringRun, effect_result, score
from sample_effect.targets.core import Target
from sample_effect.update.optim import OptimizerState, UpdateConfig

FORMAT = 1


class ProjectionOutput(Output[dict]):
    """Writes P d(s) of every backend batch as one shard under `out_dir` and keeps the manifest current.

    A directory whose manifest has the same settings key is resumed (its shards are kept, only the
    other examples are computed); another key is an error, never mixed.
    """

    rows = "updates"

    def __init__(self, out_dir: str | os.PathLike, cfg: ProjectionConfig, extra: Mapping[str, object] | None = None) -> None:
        self.out = Path(out_dir)
        self.cfg = cfg
        self.extra = dict(extra or {})

    def open(self, run: ScoringRun, target: Target | TargetVector | None) -> tuple[TargetVector | None, list[int]]:
        """Check or start the manifest; no target (the projections serve any); the examples no shard holds."""
        self.cfg.validate()
        self.run = run
        self.out.mkdir(parents=True, exist_ok=True)
        key = run.key(projection=self.cfg)
        self.manifest_path = self.out / "manifest.json"
        self.names = list(run.params)
        self.index = {n: i for i, n in enumerate(self.names)}
        self.manifest: dict = {
            "format": FORMAT, "key": key, "projection": asdict(self.cfg), "update": asdict(run.update),
            "params": self.names, "n_examples": len(run.examples), "shards": [], **self.extra,
        }
        if self.manifest_path.exists():
            old = json.loads(self.manifest_path.read_text())
            if old.get("key") != key:
                raise SampleEffectError(
                    f"{self.out} holds projections made with other settings (weights, data, update, optimiser state or "
                    "projection); use another directory or delete it"
                )
            self.manifest["shards"] = [s for s in old["shards"] if (self.out / s["file"]).exists()]
        done = {i for sh in self.manifest["shards"] for i in sh["indices"]}
        return None, [i for i in range(len(run.examples)) if i not in done]

    def write(self, rows: BatchEffects | UpdateRows) -> None:
        """Project one batch's updates parameter by parameter and write them as a shard."""
        from safetensors.torch import save_file

        assert isinstance(rows, UpdateRows)
        proj = torch.zeros(len(rows.indices), self.cfg.dim, dtype=rows.losses.dtype, device=rows.losses.device)
        for name, d in rows.updates:
            proj += project_rows(d, self.index[name], self.cfg)
        fname = f"shard-{rows.indices[0]:08d}.safetensors"
        ids = [self.run.examples[i].id for i in rows.indices]
        with atomic_path(self.out / fname) as tmp:
            save_file({"proj": proj.float().cpu().contiguous(), "loss": rows.losses.double().cpu().contiguous()},
                      str(tmp), metadata={"ids": json.dumps(ids)})
        self.manifest["shards"].append({"file": fname, "indices": list(rows.indices)})
        self.manifest["shards"].sort(key=lambda s: s["indices"][0])
        _write_manifest(self.manifest_path, self.manifest)

    def finish(self) -> dict:
        """Write the final manifest and return it."""
        _write_manifest(self.manifest_path, self.manifest)
        return self.manifest


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

    The updates come from the ghost backend (per-layer factors formed whole). A directory that
    already holds a manifest with the same settings key is resumed: shards listed there are kept and
    only the rest is computed. A different key is an error (never mixed).
    """
    run = _ghost(ScoringRun(model, params, examples, update, state, compute))
    return score(run, None, ProjectionOutput(out_dir, cfg, extra))


def _ghost(run: ScoringRun) -> ScoringRun:
    """`run` on the ghost backend: projections are formed from ghost factors whatever `compute.method` says."""
    return replace(run, compute=replace(run.compute or ComputeConfig(), method="ghost"))


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


def projected_result(
    run: ScoringRun, target: Target, path: str | os.PathLike, flag: str = "--projection",
) -> Effects:
    """Estimated effects toward `target` from the finished projection directory `path`.

    The directory must have been written with `run`'s settings (same key: weights, data, parameters,
    update, optimiser state, compute and the projection it names); otherwise a SampleEffectError
    names `flag`. No gradient is recomputed but the target's; grad_norm is NaN.
    """
    cache = load_projection(path)
    if list(run.params) != cache.manifest["params"] or _ghost(run).key(projection=cache.config) != cache.manifest["key"]:
        raise SampleEffectError(
            f"{flag} {path} was made with other weights, data, parameters, update settings or "
            "optimiser state; pass the same --model/--data/--params/--optimizer/--optimizer-state/--lr/"
            "--max-grad-norm... as to `project`"
        )
    g = run.resolve(target)
    effect = cache.scores(g.vector)
    result = effect_result(run.examples, effect, cache.loss, np.full(len(effect), np.nan), g)
    result.ids = cache.ids
    return result
