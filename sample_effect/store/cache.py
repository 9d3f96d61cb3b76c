"""Resumable, content-addressed scoring for `rank --cache-dir DIR` (and the distributed path).

Layout: `DIR/<key>/` where key is `sample_effect.engine.keys.settings_key`: a hash of everything the
effects depend on (every model weight, the chosen parameter names and dtype, the scored examples'
tokens, the update settings, the optimiser state, the compute settings that change values) and the
target (a loss target's tokens, or the resolved vector itself for direction / accuracy targets). Any changed setting gives another key,
so a finished shard is never reused for other settings. Inside:

- `manifest.json`: the key, what went into it (readable summary), n_examples, `complete`;
- `target.safetensors`: G of a loss / self target (computed once, reused on resume);
- `shard-<start>-<stop>.npz`: indices, ids, effect, loss, grad_norm of up to --shard-size
  examples, each written atomically (a killed run leaves whole shards or none).

Re-running the same command skips examples that finished shards hold; shards are
self-describing, so a resume may use another --shard-size or another number of processes.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from sample_effect.data.examples import TokenizedExample
from sample_effect.engine.core import ComputeConfig
from sample_effect.engine.keys import settings_key, vector_digest
from sample_effect.engine.vectors import TargetVector
from sample_effect.errors import ConfigError, SampleEffectError, literal
from sample_effect.io import atomic_open, atomic_path
from sample_effect.models.loading import select_parameters
from sample_effect.scoring.effects import resolve_state
from sample_effect.scoring.result import Effects
from sample_effect.scoring.run import EffectArrays, ScoringRun, check_effects, effect_result, score
from sample_effect.targets.core import Target, resolve_target_distributed
from sample_effect.update.optim import OptimizerState, UpdateConfig

log = logging.getLogger("sample_effect")

FORMAT = 1
DELAY_ENV = "SAMPLE_EFFECT_TEST_SHARD_DELAY"  # tests: seconds to sleep after each shard (to interrupt a run)


# --------------------------------------------------------------------------------------------
# Target
# --------------------------------------------------------------------------------------------


def _save_target(path: Path, g: TargetVector) -> None:
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file({n: v.detach().cpu().contiguous() for n, v in g.vector.items()}, str(tmp),
                  metadata={"kind": g.kind, "target_loss": json.dumps(g.target_loss)})


def _load_target(path: Path, chosen: Mapping[str, torch.Tensor]) -> TargetVector:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata()
        vec = {n: fh.get_tensor(n).to(chosen[n].device) for n in chosen}
    return TargetVector(vec, meta["kind"], target_loss=json.loads(meta["target_loss"]))


# --------------------------------------------------------------------------------------------
# Shards
# --------------------------------------------------------------------------------------------


def _read_shards(d: Path, n: int) -> dict[str, np.ndarray]:
    """Everything finished shards hold: arrays over range(n) (NaN where not done) and a done mask."""
    out = {"effect": np.full(n, np.nan), "loss": np.full(n, np.nan), "grad_norm": np.full(n, np.nan),
           "done": np.zeros(n, dtype=bool)}
    for f in sorted(d.glob("shard-*.npz")):
        try:
            with np.load(f) as z:
                idx = z["indices"]
                for k in ("effect", "loss", "grad_norm"):
                    out[k][idx] = z[k]
                out["done"][idx] = True
        except Exception as exc:  # a damaged shard is recomputed, never trusted
            log.warning("cache shard %s is unreadable (%s); recomputing it", f, type(exc).__name__)
    return out


def _write_shard(d: Path, idx: list[int], ids: list[str], effect: np.ndarray, loss: np.ndarray,
                 grad_norm: np.ndarray) -> None:
    f = d / f"shard-{idx[0]:08d}-{idx[-1] + 1:08d}.npz"
    with atomic_open(f, "wb") as fh:
        np.savez(fh, indices=np.array(idx, dtype=np.int64), ids=np.array(ids), effect=effect, loss=loss,
                 grad_norm=grad_norm)


def _write_manifest(d: Path, manifest: dict) -> None:
    with atomic_open(d / "manifest.json") as fh:
        fh.write(json.dumps(manifest, indent=1, default=str) + "\n")


# --------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------


def _open_run(  # type: ignore[no-untyped-def]
    root: Path, model, chosen, examples, target: Target, update: UpdateConfig, state, compute: ComputeConfig,
    params: str | None, resume: bool,
) -> tuple[Path, TargetVector]:
    """The run directory of these settings under `root` (created with its manifest) and the target G.

    A target that identifies itself before resolving (`Target.key_digest`: a loss or self target,
    by its examples) has its G read back from the run when it was saved there; any other target is
    resolved first and keyed by its vector.
    """
    from sample_effect.runtime import distributed as dist

    distributed = dist.active()
    rank0 = not distributed or dist.rank() == 0
    n = len(examples)
    if root.exists() and not root.is_dir():
        raise ConfigError("score_rank", f"<cache_dir> {literal(root)} exists and is not a directory")
    g: TargetVector | None = None
    part = target.key_digest()
    if part is None:
        g = resolve_target_distributed(target, model, chosen, examples, compute)
        part = vector_digest(g)
    key = settings_key(model, chosen, examples, update, state, compute, target=part)
    d = root / key
    exists = (d / "manifest.json").exists()
    if resume and not exists:
        others = sorted(p.name for p in root.glob("*/manifest.json")) if root.is_dir() else []
        raise ConfigError(
            "score_rank",
            f"<resume>: {literal(root)} holds no run with these settings (key {key}"
            + (f"; it holds {len(others)} run(s) with other weights, data, target or update settings" if others else "")
            + ")"
        )
    if rank0:
        d.mkdir(parents=True, exist_ok=True)
        if not exists:
            _write_manifest(d, {"format": FORMAT, "key": key, "n_examples": n, "complete": False,
                                "update": asdict(update), "params": params, "target": getattr(target, "name", ""),
                                "method": compute.method, "created": time.time()})
    if distributed:
        dist.barrier()
    d.mkdir(parents=True, exist_ok=True)  # ranks on other nodes without a shared file system
    if g is None:
        tfile = d / "target.safetensors"
        have = tfile.exists()
        if distributed:
            have = dist.all_agree(have)
        if have:
            g = _load_target(tfile, chosen)
        else:
            g = resolve_target_distributed(target, model, chosen, examples, compute)
            if rank0:
                _save_target(tfile, g)
    return d, g


class CacheOutput(EffectArrays[Effects | None]):
    """The sharded, resumable output of `rank --cache-dir` and of torchrun jobs.

    Under `cache_dir` (when given) the run directory of the settings key holds the target and one
    shard per `shard_size` examples; finished shards are read back instead of recomputed. With
    several processes each takes a block of the examples and rank 0 gathers the whole result.
    """

    def __init__(self, cache_dir: str | os.PathLike | None, shard_size: int, resume: bool, params: str | None) -> None:
        self.root = None if cache_dir is None else Path(cache_dir)
        self.shard_size = shard_size if cache_dir is not None else None
        self.resume = resume
        self.params = params

    def open(self, run: ScoringRun, target: Target | TargetVector | None) -> tuple[TargetVector | None, list[int]]:
        """The run directory and G (read back or resolved), and this process's examples that no shard holds."""
        from sample_effect.runtime import distributed as dist

        assert run.compute is not None and isinstance(target, Target)
        self.run, self.distributed = run, dist.is_distributed()
        self.rank0 = not self.distributed or dist.rank() == 0
        n = len(run.examples)
        d, g = None, None
        if self.root is not None:
            d, g = _open_run(self.root, run.model, run.params, run.examples, target, run.update, run.state,
                             run.compute, self.params, self.resume)
        if g is None:
            g = resolve_target_distributed(target, run.model, run.params, run.examples, run.compute)
        self.dir, self.target = d, g
        self.mine = list(dist.block(n) if self.distributed else range(n))
        self.allocate(n)
        todo = self.mine
        if d is not None:
            held = _read_shards(d, n)
            for k, arr in (("effect", self.effect), ("loss", self.loss), ("grad_norm", self.grad_norm)):
                arr[held["done"]] = held[k][held["done"]]
            todo = [i for i in self.mine if not held["done"][i]]
            if self.rank0 and run.compute.progress and int(held["done"].sum()):
                print(f"cache: {int(held['done'].sum())} of {n} examples from finished shards in {d}")
        return g, todo

    def end_pass(self, indices: list[int]) -> None:
        """Check the pass's effects and write them as one shard (atomically)."""
        if not indices:
            return
        check_effects([self.run.examples[i].id for i in indices], self.effect[indices])
        if self.dir is not None:
            _write_shard(self.dir, indices, [self.run.examples[i].id for i in indices], self.effect[indices],
                         self.loss[indices], self.grad_norm[indices])
            delay = float(os.environ.get(DELAY_ENV, "0") or 0)
            if delay:
                time.sleep(delay)

    def finish(self) -> Effects | None:
        """Gather the processes' parts; the whole result on rank 0 (run marked complete), None elsewhere."""
        from sample_effect.runtime import distributed as dist

        mine = self.mine
        if self.distributed:
            parts = dist.all_gather_objects((mine, self.effect[mine], self.loss[mine], self.grad_norm[mine]))
            for idx, e, lo, gn in parts:
                self.effect[idx], self.loss[idx], self.grad_norm[idx] = e, lo, gn
        if not self.rank0:
            return None
        if self.dir is not None:
            manifest = json.loads((self.dir / "manifest.json").read_text())
            manifest["complete"] = True
            _write_manifest(self.dir, manifest)
        if not np.isfinite(self.effect).any():
            raise SampleEffectError("every effect is NaN or Inf; check the model weights and the data")
        assert self.target is not None
        return effect_result(self.run.examples, self.effect, self.loss, self.grad_norm, self.target)


def score_rank(
    model: torch.nn.Module,
    examples: Sequence[TokenizedExample],
    target: Target,
    update: UpdateConfig,
    params: str | None = None,
    optimizer_state: str | os.PathLike | OptimizerState | None = None,
    compute: ComputeConfig | None = None,
    cache_dir: str | os.PathLike | None = None,
    shard_size: int = 256,
    resume: bool = False,
) -> Effects | None:
    """Effects of every example, resumably under `cache_dir` and/or across torchrun processes.

    Returns the whole result on rank 0 (or in a single process) and None on the other ranks.
    """
    from sample_effect.runtime import distributed as dist

    compute = compute or ComputeConfig()
    update = update.validate()
    if shard_size < 1:
        raise ConfigError("score_rank", f"<shard_size> must be >= 1, got {shard_size}")
    if resume and cache_dir is None:
        raise ConfigError("score_rank", "<resume> needs <cache_dir> (the directory of the run to resume)")
    if len(examples) == 0:
        raise SampleEffectError("the dataset is empty")
    chosen = select_parameters(model, params)
    if dist.is_distributed():
        dist.init(next(iter(chosen.values())).device)
    state = resolve_state(model, chosen, update, optimizer_state)
    run = ScoringRun(model, chosen, examples, update, state, compute)
    return score(run, target, CacheOutput(cache_dir, shard_size, resume, params))
