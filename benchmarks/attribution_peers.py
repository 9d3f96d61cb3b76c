"""The peer methods of benchmarks/attribution_quality.py: each scores the pool toward every target example.

Every runner takes a `Setup` (the pool, the queries and the run's checkpoints) and returns the [n_pool,
n_queries] score matrix (larger = predicted to lower the query's loss more), a note on what it did, and
its start time (or minus the seconds it timed itself). See attribution_quality.py for the driver.
"""

from __future__ import annotations

import glob
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from peers import seq_losses  # noqa: E402

METHODS = ["trak", "kronfluence-ekfac", "kronfluence-identity", "dattri-graddot", "dattri-gradcos",
           "dattri-tracin", "bergson", "less"]
PEERS = {"trak": "traker", "kronfluence": "kronfluence", "dattri": "dattri", "bergson": "bergson"}
POOL = ROOT / "runs/lds/data/pool.jsonl"
TARGET = ROOT / "runs/lds/data/target.jsonl"
LDS_RUN = ROOT / "runs/lds/lds-m48-r2"
LDS_OUT = ROOT / "runs/lds/peers-m48-r2"
SUBSETS, RUNS = 48, 2
SELF = [0, 73, 146, 219]  # pool examples scored as extra targets (the sign check)


@dataclass
class Point:
    """One checkpoint of the run: its directory, the step and the lr of the next step (from optimizer.pt)."""

    path: str
    step: int
    lr: float


@dataclass
class Setup:
    """The pool, the queries (16 targets + the sign-check pool examples) and the run's checkpoints."""

    pool: list[Any]
    queries: list[Any]
    ids: torch.Tensor
    mask: torch.Tensor
    qids: torch.Tensor
    qmask: torch.Tensor
    points: list[Point]  # checkpoint-7, -14, -21, final
    quick: bool

    @property
    def final(self) -> Point:
        """The end of the run."""
        return self.points[-1]


# ------------------------------------------------------------------ data and checkpoints


def load(path: str) -> torch.nn.Module:
    """A checkpoint in float32 on CPU, eval mode, eager attention (sample-effect's loader)."""
    from sample_effect.models.loading import load_model

    return load_model(path, "float32", device="cpu")[0]


def tokenizer() -> Any:
    """The tiny model's tokenizer."""
    from sample_effect.models.loading import load_model
    from sample_effect.models.registry import resolve_model

    return load_model(str(resolve_model("tiny")), "float32", device="cpu")[1]


def examples(path: Path, tok: Any) -> list[Any]:
    """TokenizedExamples of an SFT JSONL file (one response sequence each, checked)."""
    from sample_effect.data.examples import load_examples, tokenize_examples

    exs = tokenize_examples(load_examples(str(path)), tok)[0]
    if any(len(e.sequences) != 1 for e in exs):
        raise SystemExit(f"{path}: an example with several response sequences; this benchmark assumes one")
    return exs


def padded(exs: list[Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids [B, T], label mask [B, T-1]) right-padded to one width."""
    from sample_effect.data.examples import pad_sequences

    return pad_sequences([e.sequences[0] for e in exs], [e.response_starts[0] for e in exs])


def sft_config() -> Any:
    """The trajectory run of `validate lds` (--lr 2e-4 --max-grad-norm 1 --batch-size 4, 28 steps, save every 7)."""
    from sample_effect.training.common import adamw_update
    from sample_effect.training.sft import SFTConfig

    return SFTConfig(update=adamw_update(2e-4, 1.0, 0.0), batch_size=4, max_steps=28, save_every=7, seed=0)


def trajectory(out: Path) -> tuple[Path, str]:
    """The run's directory and where it came from: the LDS run's cache, else trained into OUT/trajectory."""
    for d in sorted(glob.glob(str(LDS_RUN / "cache/trajectory-*"))):
        if (Path(d) / "final/optimizer.pt").exists() and (Path(d) / "checkpoint-21/optimizer.pt").exists():
            return Path(d), f"from the LDS run's cache ({Path(d).relative_to(ROOT)})"
    own = out / "trajectory"
    if not (own / "final/optimizer.pt").exists():
        from sample_effect.models.registry import resolve_model
        from sample_effect.training.sft import train_sft

        tok = tokenizer()
        pool = examples(POOL, tok)
        torch.manual_seed(0)
        train_sft(load(str(resolve_model("tiny"))), tok, pool, sft_config(), out_dir=own, progress=False)
    return own, f"trained here with the same config ({own})"


def points(run: Path) -> list[Point]:
    """checkpoint-STEP directories in step order, then final, each with the lr from its optimizer.pt."""
    from sample_effect.scoring.checkpoints import run_checkpoints

    out = [Point(c.path, c.step, c.lr) for c in run_checkpoints(run)]
    blob = torch.load(run / "final/optimizer.pt", map_location="cpu", weights_only=True)
    out.append(Point(str(run / "final"), 28, float(blob["optimizer"]["param_groups"][0]["lr"])))
    return out


def setup(run: Path, quick: bool) -> Setup:
    """Tokenize the pool and the queries, check the loss against the project's, list the checkpoints."""
    from sample_effect.engine.core import example_loss_values

    tok = tokenizer()
    pool, target = examples(POOL, tok), examples(TARGET, tok)
    queries = target + [pool[i] for i in SELF]
    ids, mask = padded(pool)
    qids, qmask = padded(queries)
    s = Setup(pool, queries, ids, mask, qids, qmask, points(run), quick)
    model = load(s.final.path)
    with torch.no_grad():
        mine = seq_losses(model, ids[:8], mask[:8]).double()
    ref = example_loss_values(model, pool[:8]).double()
    if not torch.allclose(mine, ref, atol=1e-5):
        raise SystemExit(f"padded loss {mine.tolist()} differs from example_loss_values {ref.tolist()}")
    return s


def rows(n: int, size: int) -> list[slice]:
    """Consecutive slices of at most `size` rows."""
    return [slice(a, min(a + size, n)) for a in range(0, n, size)]


def by_length(exs: list[Any]) -> np.ndarray:
    """Indices of `exs` from shortest to longest sequence (stable): batches of similar length pad little."""
    return np.argsort([int(e.sequences[0].shape[0]) for e in exs], kind="stable")


def pad_collate(exs: list[Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids, label mask, attention mask) of a batch of examples, right-padded to its longest."""
    ids, mask = padded(exs)
    lens = torch.tensor([int(e.sequences[0].shape[0]) for e in exs])
    return ids, mask, (torch.arange(ids.shape[1])[None] < lens[:, None]).long()


class Examples(torch.utils.data.Dataset):
    """TokenizedExamples as a map-style dataset (batched by `pad_collate`)."""

    def __init__(self, exs: list[Any]) -> None:
        self.exs = exs

    def __len__(self) -> int:
        return len(self.exs)

    def __getitem__(self, i: int) -> Any:
        return self.exs[i]


def unsort(sorted_scores: np.ndarray, rows_order: np.ndarray, cols_order: np.ndarray) -> np.ndarray:
    """Scores computed on length-sorted pool rows and query columns, back in the files' order."""
    out = np.empty_like(sorted_scores)
    out[np.ix_(rows_order, cols_order)] = sorted_scores
    return out


def one(e: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids [1, T], label mask [1, T-1]) of one example, unpadded."""
    return padded([e])


# ------------------------------------------------------------------ methods
# Each returns ([n_pool, n_queries] scores, notes, start): start is the perf_counter when scoring began
# (after the checkpoints were loaded), or minus the seconds when the runner timed its pieces itself.


def run_trak(s: Setup) -> tuple[np.ndarray, str, float]:
    """traker's TRAKer with the per-example loss as the model output, ensembled over the checkpoints."""
    from trak import TRAKer
    from trak.gradient_computers import IterativeGradientComputer
    from trak.modelout_functions import AbstractModelOutput

    from sample_effect.objectives.losses import sft_sequence_loss

    class LossOutput(AbstractModelOutput):
        """The per-example SFT loss as TRAK's model output; d loss / d output = 1."""

        def __init__(self) -> None:
            super().__init__()

        def get_output(self, model, weights, buffers, ids, mask):  # type: ignore[no-untyped-def]
            # IterativeGradientComputer passes the batch (weights None); the functional one one example
            return sft_sequence_loss(model(input_ids=ids).logits, ids, mask)

        def get_out_to_loss_grad(self, model, weights, buffers, batch):  # type: ignore[no-untyped-def]
            return torch.ones(batch[0].shape[0], 1)

    pts = s.points[-1:] if s.quick else s.points
    dim = 64 if s.quick else 100  # <= 100: one block of TRAK's BasicProjector, generated once per model id
    sds = [load(p.path).state_dict() for p in pts]
    n, q = len(s.pool), len(s.queries)
    t0 = time.perf_counter()
    traker = TRAKer(model=load(s.final.path), task=LossOutput(), train_set_size=n,
                    save_dir=tempfile.mkdtemp(prefix="trak-"), device="cpu", proj_dim=dim,
                    gradient_computer=IterativeGradientComputer, use_half_precision=False,
                    logging_level=logging.WARNING)
    for mid, sd in enumerate(sds):
        traker.load_checkpoint(sd, model_id=mid)
        for e in s.pool:
            traker.featurize(batch=one(e), num_samples=1)
    traker.finalize_features()
    for mid, sd in enumerate(sds):
        traker.start_scoring_checkpoint(exp_name="targets", checkpoint=sd, model_id=mid, num_targets=q)
        traker.projector.model_id = -1  # finalize_features freed the matrix; make project() regenerate it
        for e in s.queries:
            traker.score(batch=one(e), num_samples=1)
    scores = np.asarray(traker.finalize_scores(exp_name="targets"), dtype=np.float64)
    notes = (f"TRAKer(task=loss as model output, out_to_loss=1, BasicProjector normal (its CPU default), "
             f"proj_dim={dim}, float32, lambda_reg 0), all parameters, ensembled (averaged) over {len(pts)} "
             f"checkpoint(s) {[p.step for p in pts]} as model ids; IterativeGradientComputer, one example per "
             "featurize/score call, unpadded (the vmap FunctionalGradientComputer on batches padded to the pool's "
             f"longest example ran ~2 s/example on this CPU); proj_dim < n_pool = {n} because with proj_dim >= n "
             "the Phi^T Phi TRAK inverts is singular")
    return scores, notes, t0


def run_kronfluence(s: Setup, strategy: str) -> tuple[np.ndarray, str, float]:
    """Kronfluence pairwise scores (queries x pool) at the final checkpoint, Linear modules of the base model."""
    from kronfluence.analyzer import Analyzer, prepare_model
    from kronfluence.arguments import FactorArguments, ScoreArguments
    from kronfluence.task import Task
    from kronfluence.utils.dataset import DataLoaderKwargs

    from sample_effect.objectives.losses import sft_sequence_loss

    model = load(s.final.path)
    mods = [f"model.{n}" for n, m in model.model.named_modules() if isinstance(m, torch.nn.Linear)]

    class LMTask(Task):
        """Summed per-example SFT loss; labels sampled from the model for the Fisher (sample=True)."""

        def compute_train_loss(self, batch: Any, model: torch.nn.Module, sample: bool = False) -> torch.Tensor:
            ids, mask, _ = batch
            logits = model(input_ids=ids).logits
            if not sample:
                return sft_sequence_loss(logits, ids, mask).sum()
            lp = torch.log_softmax(logits[:, :-1].float(), -1)
            with torch.no_grad():
                y = torch.multinomial(lp.detach().exp().flatten(0, 1), 1).view(ids.shape[0], -1)
            m = mask.to(lp.dtype)
            return (-(lp.gather(-1, y[..., None])[..., 0] * m).sum(-1) / m.sum(-1)).sum()

        def compute_measurement(self, batch: Any, model: torch.nn.Module) -> torch.Tensor:
            return self.compute_train_loss(batch, model)

        def get_influence_tracked_modules(self) -> list[str]:
            return mods

        def get_attention_mask(self, batch: Any) -> torch.Tensor:
            return batch[2]

    task = LMTask()
    t0 = time.perf_counter()
    model = prepare_model(model, task)
    analyzer = Analyzer("aq", model, task, cpu=True, disable_tqdm=True, output_dir=tempfile.mkdtemp(prefix="kf-"),
                        log_level=logging.WARNING)
    analyzer.set_dataloader_kwargs(DataLoaderKwargs(collate_fn=pad_collate))
    po, qo = by_length(s.pool), by_length(s.queries)
    train, query = Examples([s.pool[i] for i in po]), Examples([s.queries[i] for i in qo])
    analyzer.fit_all_factors("f", train, per_device_batch_size=16, factor_args=FactorArguments(strategy=strategy))
    analyzer.compute_pairwise_scores("s", "f", query, train, per_device_query_batch_size=len(query),
                                     per_device_train_batch_size=16, score_args=ScoreArguments())
    scores = unsort(analyzer.load_pairwise_scores("s")["all_modules"].double().T.numpy(), po, qo)
    notes = (f"Analyzer(cpu=True), FactorArguments(strategy='{strategy}') fit on the pool (labels sampled from "
             "the model for the covariances, padding masked), length-sorted batches of 16, default ScoreArguments (damping heuristic), pairwise scores at "
             f"the final checkpoint; tracked: the {len(mods)} nn.Linear modules of the base model (not the tied "
             "lm_head/embedding, norms)")
    return scores, notes, t0


def run_dattri(s: Setup, kind: str) -> tuple[np.ndarray, str, float]:
    """dattri: AttributionTask gradients + dattri's random projection; GradDot / GradCos / TracIn sums here."""
    from dattri.func.projection import random_project
    from dattri.task import AttributionTask

    from sample_effect.objectives.losses import sft_sequence_loss

    if kind == "tracin":
        pts = s.points[-2:] if s.quick else s.points
    else:
        pts = [s.final]
    dim = 64 if s.quick else 512
    model = load(s.final.path)
    sds = [load(p.path).state_dict() for p in pts]

    def loss_func(params: dict[str, torch.Tensor], data: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        ids, mask = data
        logits = torch.func.functional_call(model, params, (ids[None],)).logits
        return sft_sequence_loss(logits, ids[None], mask[None])[0]

    t0 = time.perf_counter()
    task = AttributionTask(loss_func=loss_func, model=model, checkpoints=sds)
    exs = s.pool + s.queries
    n = len(s.pool)
    total = np.zeros((n, len(s.queries)))
    for k, p in enumerate(pts):
        flat, _ = task.get_param(ckpt_idx=k)
        grad_fn = task.get_grad_loss_func(in_dims=(None, 0))
        g = torch.empty(len(exs), flat.numel())
        for i, e in enumerate(exs):  # one unpadded example per call (see the notes)
            g[i] = grad_fn(flat, one(e))[0].detach()
        proj = random_project(g, len(exs), proj_dim=dim, proj_max_batch_size=32, device="cpu", proj_seed=0,
                              proj_type="normal")
        pg = proj(torch.nan_to_num(g), ensemble_id=k).double()
        del g
        if kind == "gradcos":
            pg = torch.nn.functional.normalize(pg, dim=1)
        weight = p.lr if kind == "tracin" else 1.0
        total += weight * (pg[:n] @ pg[n:].T).numpy()
    what = {"graddot": "weight 1, raw projected gradients (Grad-Dot)",
            "gradcos": "weight 1, normalized projected gradients (Grad-Cos)",
            "tracin": "weights = lr of each checkpoint from optimizer.pt, raw projected gradients (TracIn)"}[kind]
    notes = (f"dattri AttributionTask.get_grad_loss_func (vmap of grad, all parameters) per unpadded example, "
             f"dattri random_project to {dim} dims (proj_type 'normal'; seed 0, ensemble id = checkpoint), "
             f"checkpoint(s) {[p.step for p in pts]}, {what}; the dot / cosine / lr-weighted sum is done here, as "
             "TracInAttributor does it, because TracInAttributor recomputes the query gradients for every train "
             "batch and needs padded batches: ~0.9-1.4 s per example gradient on this CPU (a full TracIn run "
             "would take ~25 min), against ~0.2 s unpadded one at a time")
    return total, notes, t0


def run_bergson(s: Setup) -> tuple[np.ndarray, str, float]:
    """bergson: default IndexConfig gradient collection of pool and queries, inner product per example pair."""
    from bergson import GradientProcessor, IndexConfig, InMemoryCollector
    from bergson.collector.collector import CollectorComputer
    from datasets import Dataset

    model = load(s.final.path)

    def collect(exs: list[Any], cfg: IndexConfig) -> dict[str, torch.Tensor]:
        seqs = [e.sequences[0].tolist() for e in exs]
        labels = [[-100] * e.response_starts[0] + q[e.response_starts[0]:] for e, q in zip(exs, seqs)]
        data = Dataset.from_dict({"input_ids": seqs, "labels": labels})
        os.makedirs(cfg.partial_run_path, exist_ok=True)
        col = InMemoryCollector(model=model.base_model, cfg=cfg, processor=GradientProcessor(), data=data)
        order = by_length(exs).tolist()
        batches = [order[r] for r in rows(len(data), 16)]
        CollectorComputer(model, data, collector=col, batches=batches, cfg=cfg).run_with_collector_hooks(desc="bergson")
        return dict(col.gradients)

    t0 = time.perf_counter()
    cfg = IndexConfig(run_path=os.path.join(tempfile.mkdtemp(prefix="bergson-"), "run"))
    gp, gq = collect(s.pool, cfg), collect(s.queries, cfg)
    scores = sum(gp[k].flatten(1).double() @ gq[k].flatten(1).double().T for k in gq).numpy()
    notes = (f"InMemoryCollector + CollectorComputer with the default IndexConfig (projection_dim={cfg.projection_dim}, "
             f"loss_reduction='{cfg.loss_reduction}' over response tokens, include_bias={cfg.include_bias}) and the "
             "default GradientProcessor (no normalizer, no preconditioner), hooks on the base model's Linear modules, "
             "final checkpoint, length-sorted batches of 16; score = inner product of pool and query gradients (bergson score's default "
             "'individual' scoring, unit_normalize off)")
    return scores, notes, t0


def rademacher_project(g: torch.Tensor, dim: int, seed: int = 0, block: int = 65536) -> torch.Tensor:
    """g [B, D] @ R [D, dim] / sqrt(dim), R a seeded +-1 matrix generated in row blocks (never stored whole)."""
    out = torch.zeros(g.shape[0], dim, dtype=torch.float64)
    for b, a in enumerate(range(0, g.shape[1], block)):
        gen = torch.Generator().manual_seed(seed * 1_000_003 + b)
        r = torch.randint(0, 2, (min(block, g.shape[1] - a), dim), generator=gen, dtype=torch.float32) * 2 - 1
        out += (g[:, a : a + block] @ r).double()
    return out / dim**0.5


def example_grads(model: torch.nn.Module, exs: list[Any]) -> torch.Tensor:
    """[B, D] per-example loss gradients over all parameters (one backward per example, unpadded)."""
    from sample_effect.data.examples import label_mask
    from sample_effect.objectives.losses import sft_sequence_loss

    params = [p for p in model.parameters() if p.requires_grad]
    out = torch.empty(len(exs), sum(p.numel() for p in params))
    for i, e in enumerate(exs):
        ids = e.sequences[0][None]
        mask = label_mask(e.sequences[0], e.response_starts[0])[None]
        loss = sft_sequence_loss(model(input_ids=ids).logits, ids, mask)[0]
        out[i] = torch.cat([g.flatten() for g in torch.autograd.grad(loss, params)])
    return out


def run_less(s: Setup) -> tuple[np.ndarray, str, float]:
    """LESS: cosine of projected Adam-preconditioned pool gradients and SGD query gradients, lr-weighted sum."""
    pts = s.points[-2:-1] if s.quick else s.points[:-1]
    dim = 64 if s.quick else 512
    total = np.zeros((len(s.pool), len(s.queries)))
    seconds = 0.0
    for p in pts:
        model = load(p.path)
        names = [n for n, q in model.named_parameters() if q.requires_grad]
        blob = torch.load(Path(p.path) / "optimizer.pt", map_location="cpu", weights_only=True)
        opt, order = blob["optimizer"], blob["param_names"]
        if sorted(order) != sorted(names):
            raise RuntimeError(f"optimizer.pt of {p.path} names other parameters than the model's")
        group = opt["param_groups"][0]
        (b1, b2), eps = group["betas"], group["eps"]
        state = {order[i]: st for i, st in opt["state"].items()}
        m = torch.cat([state[n]["exp_avg"].flatten() for n in names])
        v = torch.cat([state[n]["exp_avg_sq"].flatten() for n in names])
        t = float(state[names[0]]["step"]) + 1
        t0 = time.perf_counter()
        gamma = torch.empty(len(s.pool), m.numel())
        for r in rows(len(s.pool), 32):  # chunks keep the peak near one [n, D] float32 buffer
            g = example_grads(model, s.pool[r])
            m1 = (g * (1 - b1)).add_(m, alpha=b1).div_(1 - b1**t)
            v1 = g.pow_(2).mul_(1 - b2).add_(v, alpha=b2).div_(1 - b2**t)
            gamma[r] = m1.div_(v1.sqrt_().add_(eps))
            del g, m1, v1
        pp = rademacher_project(gamma, dim)
        del gamma
        pq = rademacher_project(example_grads(model, s.queries), dim)
        cos = torch.nn.functional.normalize(pp, dim=1) @ torch.nn.functional.normalize(pq, dim=1).T
        total += p.lr * cos.numpy()
        seconds += time.perf_counter() - t0
    notes = (f"written here (no library): for checkpoint(s) {[p.step for p in pts]}, Gamma_i = m'/(sqrt(v')+eps) "
             "after one torch-AdamW moment update on pool example i's gradient from the saved state "
             f"(bias-corrected at step t+1; betas/eps from optimizer.pt), all parameters, a {dim}-dim seeded "
             "Rademacher projection (same matrix for every checkpoint), cosine with the projected SGD gradient "
             "of each query, summed with weight lr_k; per-example gradients by one backward each (unpadded)")
    return total, notes, -seconds


RUNNERS: dict[str, Callable[[Setup], Any]] = {
    "trak": run_trak,
    "kronfluence-ekfac": lambda s: run_kronfluence(s, "ekfac"),
    "kronfluence-identity": lambda s: run_kronfluence(s, "identity"),
    "dattri-graddot": lambda s: run_dattri(s, "graddot"),
    "dattri-gradcos": lambda s: run_dattri(s, "gradcos"),
    "dattri-tracin": lambda s: run_dattri(s, "tracin"),
    "bergson": run_bergson,
    "less": run_less,
}


