"""Sample-effect next to peer libraries on one workload, in one run, as ratios to the floor.

One tiny Qwen2-style model (~0.7M parameters, float32), one batch of B equal-length sequences
(the last 3/4 of each is the response), one target direction G = the gradient of the mean loss on
a separate target batch. Every method computes something per example from the same per-example
loss (mean response-token cross-entropy): sample-effect's SGD effects (ghost path), clipped SGD,
AdamW from a fresh state and per-example gradient norms; opacus per-sample gradients
(GradSampleModule) and its ghost-clipping norms; bergson gradient collection; dattri, TRAK
(traker) and the naive loop (one backward per example) per-example gradients; Kronfluence
pairwise scores with the identity strategy. The floor is one batched forward+backward of the
mean loss on the same batch, timed in the same run.

Agreement is against the naive loop (float32), on whatever quantity the method gives: the
per-example inner product <g_i, G> (restricted to the parameters the peer covers), the effect
built from it, or the gradient norm. It is the largest per-example relative error. Peak memory is
measured in a fresh subprocess per method (VmHWM after resetting it, Linux). A peer that is not
installed, or cannot run this model, is recorded with the reason instead of failing the run.

    OMP_NUM_THREADS=1 taskset -c 0 python benchmarks/peers.py --quick --out benchmarks/results/peers_quick.json
"""

from __future__ import annotations

import argparse
import copy
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sample_effect.runtime.cpu import cpu_info

sys.path.insert(0, str(Path(__file__).resolve().parent))
from per_example import _status_mb
from per_example import runner as per_example_runner

Values = dict[str, np.ndarray]

METHODS = [
    "floor", "loop", "se_sgd", "se_clip", "se_adamw", "se_norms", "opacus", "opacus_ghost",
    "bergson", "dattri", "trak", "kronfluence",
]
PEERS = {"opacus": "opacus", "opacus_ghost": "opacus", "bergson": "bergson", "dattri": "dattri",
         "trak": "traker", "kronfluence": "kronfluence"}
NOTES = {
    "floor": "one batched forward+backward of the mean loss",
    "loop": "one loss.backward() per example; the reference for agreement",
    "se_sgd": "compute_effects, SGD, ghost path (auto); compared: effect = -<g_i, G>",
    "se_clip": "compute_effects, SGD with clip C = median per-example norm; compared: clipped effect",
    "se_adamw": "compute_effects, AdamW from a fresh state (torch defaults); compared: torch.optim.AdamW step on each loop gradient",
    "se_norms": "compute_effects with grad_norms=True (SGD); compared: ||g_i||",
    "opacus": "GradSampleModule(strict=False, loss_reduction='sum'), hooks + functorch fallback for RMSNorm; compared: <g_i, G>",
    "opacus_ghost": "GradSampleModuleFastGradientClipping(use_ghost_clipping=True), first backward only (norms); compared: ||g_i||",
    "bergson": "InMemoryCollector + CollectorComputer, no projection, include_bias; Linear modules of the base model only (no embedding, norms or lm_head); compared: <g_i, G> over those",
    "dattri": "AttributionTask.get_grad_loss_func (vmap of grad), all parameters; compared: <g_i, G>",
    "trak": "FunctionalGradientComputer with the loss as model output, no projection; compared: <g_i, G>",
    "kronfluence": "identity strategy, pairwise scores of the target batch (queries) vs the batch, averaged over queries; tracked: Linear modules of the base model; compared: <g_i, G> over those",
}


@dataclass
class Workload:
    """The model, the batch, the target direction and the naive-loop reference values."""

    model: torch.nn.Module
    params: dict[str, torch.nn.Parameter]
    exs: list[Any]
    ids: torch.Tensor
    mask: torch.Tensor
    target_ids: torch.Tensor
    target_mask: torch.Tensor
    target: dict[str, torch.Tensor]
    linear_params: list[str]  # parameters of the base model's nn.Linear modules (bergson, kronfluence)
    ref: Values = field(default_factory=dict)
    clip: float = 1.0


def sizes(quick: bool) -> dict[str, int]:
    """Model and batch sizes: ~0.7M parameters, B = 16, T = 128 (quick: ~0.03M, B = 4, T = 32)."""
    if quick:
        return {"vocab": 512, "hidden": 32, "layers": 2, "heads": 4, "batch": 4, "seq": 32, "n_target": 2}
    return {"vocab": 2048, "hidden": 128, "layers": 3, "heads": 4, "batch": 16, "seq": 128, "n_target": 4}


def seq_losses(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-sequence loss: mean cross-entropy over the response tokens ([B, T] -> [B])."""
    from sample_effect.objectives.losses import sft_sequence_loss

    return sft_sequence_loss(model(input_ids=ids).logits, ids, mask)


def build(quick: bool) -> Workload:
    """Seeded tiny Qwen2 model, batch and target; the reference values come from `reference`."""
    from sample_effect.data.examples import TokenizedExample, pad_sequences
    from sample_effect.models.loading import prepare_model, select_parameters
    from sample_effect.models.tiny import build_tiny_model, train_tokenizer

    s = sizes(quick)
    tok = train_tokenizer(["Knights always tell the truth, and knaves always lie."], vocab_size=300)
    model = prepare_model(build_tiny_model("qwen2", tok, torch.float32, seed=0, vocab_size=s["vocab"],
                                           hidden=s["hidden"], layers=s["layers"], heads=s["heads"],
                                           max_len=max(512, s["seq"])))
    params = dict(select_parameters(model))
    gen = torch.Generator().manual_seed(0)
    seq, start = s["seq"], s["seq"] // 4
    exs = [TokenizedExample(f"e{i}", [torch.randint(0, s["vocab"], (seq,), generator=gen)], [start])
           for i in range(s["batch"])]
    ids, mask = pad_sequences([e.sequences[0] for e in exs], [start] * len(exs))
    tseqs = [torch.randint(0, s["vocab"], (seq,), generator=gen) for _ in range(s["n_target"])]
    tids, tmask = pad_sequences(tseqs, [start] * len(tseqs))
    grads = torch.autograd.grad(seq_losses(model, tids, tmask).mean(), list(params.values()))
    target = {n: g.detach().clone() for n, g in zip(params, grads)}
    linear = [f"model.{name}.{kind}" for name, mod in model.model.named_modules()
              if isinstance(mod, torch.nn.Linear) for kind in ("weight", "bias") if getattr(mod, kind, None) is not None]
    return Workload(model, params, exs, ids, mask, tids, tmask, target, [n for n in linear if n in params])


def loop_grads(w: Workload) -> list[list[torch.Tensor]]:
    """Per-example gradients, one backward per example (the naive oracle)."""
    leaves = list(w.params.values())
    out = []
    for i in range(w.ids.shape[0]):
        loss = seq_losses(w.model, w.ids[i : i + 1], w.mask[i : i + 1])[0]
        out.append(list(torch.autograd.grad(loss, leaves)))
    return out


def dots(w: Workload, grads: list[list[torch.Tensor]], names: list[str] | None = None) -> np.ndarray:
    """<g_i, G> in float64 for each example, over `names` (default: every scored parameter)."""
    keep = set(names) if names is not None else set(w.params)
    return np.array([float(sum((g.double() * w.target[n].double()).sum() for g, n in zip(gs, w.params) if n in keep))
                     for gs in grads])


def reference(w: Workload) -> None:
    """Fill `w.ref` from the naive loop: inner products, norms, clipped SGD and AdamW effects."""
    grads = loop_grads(w)
    w.ref["dot"] = dots(w, grads)
    w.ref["dot_linear"] = dots(w, grads, w.linear_params)
    w.ref["norm"] = np.array([float(sum((g.double() ** 2).sum() for g in gs) ** 0.5) for gs in grads])
    w.clip = float(np.median(w.ref["norm"]))
    coef = np.minimum(1.0, w.clip / w.ref["norm"])
    w.ref["effect_sgd"] = -w.ref["dot"]
    w.ref["effect_clip"] = -coef * w.ref["dot"]
    adamw = []
    for gs in grads:  # one torch.optim.AdamW step (fresh state, lr = 1) per example, in float64
        ps = [p.detach().double().clone().requires_grad_(True) for p in w.params.values()]
        for p, g in zip(ps, gs):
            p.grad = g.double()
        before = [p.detach().clone() for p in ps]
        torch.optim.AdamW(ps, lr=1.0).step()
        adamw.append(float(sum(((p.detach() - b) * w.target[n].double()).sum() for p, b, n in zip(ps, before, w.params))))
    w.ref["effect_adamw"] = np.array(adamw)


# ------------------------------------------------------------------ runners
# Each returns a callable that does the method's work on the batch and returns its per-example values.


def run_loop(w: Workload) -> Callable[[], Values]:
    """The naive loop, dotting each gradient with G."""
    return lambda: {"dot": dots(w, loop_grads(w))}


def run_sample_effect(w: Workload, method: str) -> Callable[[], Values]:
    """sample-effect's compute_effects on the batch (ghost path)."""
    from sample_effect.engine.core import ComputeConfig
    from sample_effect.engine.vectors import TargetVector
    from sample_effect.scoring.effects import compute_effects
    from sample_effect.update.optim import UpdateConfig

    upd = {"se_sgd": UpdateConfig("sgd"), "se_clip": UpdateConfig("sgd", clip=w.clip),
           "se_adamw": UpdateConfig("adamw"), "se_norms": UpdateConfig("sgd")}[method]
    compute = ComputeConfig(batch_size=len(w.exs), memory_budget=None, progress=False,
                            grad_norms=(method == "se_norms"))
    tv = TargetVector(w.target, "bench")
    key = {"se_sgd": "effect_sgd", "se_clip": "effect_clip", "se_adamw": "effect_adamw", "se_norms": "norm"}[method]

    def run() -> Values:
        res = compute_effects(w.model, w.params, w.exs, tv, upd, compute=compute)
        return {key: res.grad_norm if method == "se_norms" else res.effect}

    return run


def _flat_dot(w: Workload, per_param: dict[str, torch.Tensor]) -> np.ndarray:
    """<g_i, G> from per-parameter per-example gradients [B, *shape] keyed by parameter name."""
    total = torch.zeros(w.ids.shape[0], dtype=torch.float64)
    for n, g in per_param.items():
        total += (g.detach().double().flatten(1) * w.target[n].double().flatten()).sum(1)
    return total.numpy()


def run_opacus(w: Workload) -> Callable[[], Values]:
    """opacus GradSampleModule: per-sample gradients in p.grad_sample after one summed backward."""
    from opacus import GradSampleModule

    gsm = GradSampleModule(copy.deepcopy(w.model), loss_reduction="sum", strict=False)
    gsm.train()  # opacus records activations only in training mode (this model has no dropout)
    named = dict(gsm._module.named_parameters())

    def run() -> Values:
        seq_losses(gsm, w.ids, w.mask).sum().backward()
        gs = {n: p.grad_sample for n, p in named.items() if n in w.params}
        missing = [n for n in w.params if gs.get(n) is None]
        if missing:
            raise RuntimeError(f"no grad_sample for {len(missing)} parameter(s), e.g. {missing[0]}")
        out = {"dot": _flat_dot(w, gs)}
        for p in named.values():
            p.grad_sample = None
            p.grad = None
        return out

    return run


def run_opacus_ghost(w: Workload) -> Callable[[], Values]:
    """opacus ghost clipping: per-sample gradient norms from the first backward."""
    from opacus.grad_sample import GradSampleModuleFastGradientClipping

    gsm = GradSampleModuleFastGradientClipping(copy.deepcopy(w.model), loss_reduction="sum", strict=False,
                                               max_grad_norm=w.clip, use_ghost_clipping=True)
    gsm.train()

    def run() -> Values:
        gsm.zero_grad()
        seq_losses(gsm, w.ids, w.mask).sum().backward()
        norms = gsm.get_norm_sample().detach().double().numpy()
        for p in gsm.parameters():
            p.grad = None
        return {"norm": norms}

    return run


def run_bergson(w: Workload) -> Callable[[], Values]:
    """bergson: in-memory per-example gradient collection (hooks on the base model's Linear modules)."""
    from bergson import GradientProcessor, IndexConfig, InMemoryCollector
    from bergson.collector.collector import CollectorComputer
    from datasets import Dataset

    start = int((~w.mask[0]).sum()) + 1
    labels = w.ids.clone()
    labels[:, :start] = -100
    data = Dataset.from_dict({"input_ids": w.ids.tolist(), "labels": labels.tolist()})
    model = copy.deepcopy(w.model)
    tmp = tempfile.mkdtemp(prefix="bergson-")
    cfg = IndexConfig(run_path=os.path.join(tmp, "run"), loss_reduction="mean", include_bias=True, projection_dim=0)
    mods = {n.rsplit(".", 1)[0] for n in w.linear_params}

    def run() -> Values:
        os.makedirs(cfg.partial_run_path, exist_ok=True)
        collector = InMemoryCollector(model=model.base_model, cfg=cfg, processor=GradientProcessor(include_bias=True),
                                      data=data)
        CollectorComputer(model, data, collector=collector, batches=[list(range(len(data)))],
                          cfg=cfg).run_with_collector_hooks(desc="bergson")
        got = {f"model.{k}" for k in collector.gradients}
        if got != mods:
            raise RuntimeError(f"bergson collected {len(got)} modules, expected {len(mods)}")
        total = torch.zeros(len(data), dtype=torch.float64)
        for k, g in collector.gradients.items():
            wt, b = w.target[f"model.{k}.weight"], w.target.get(f"model.{k}.bias")
            gt = wt if b is None else torch.cat([wt, b[:, None]], 1)
            total += (g.double() * gt.double().flatten()).sum(1)
        return {"dot_linear": total.numpy()}

    return run


def run_dattri(w: Workload) -> Callable[[], Values]:
    """dattri: vmap(grad) of the loss over the batch via AttributionTask, flattened parameters."""
    from dattri.task import AttributionTask

    model = copy.deepcopy(w.model)

    def loss_func(params: dict[str, torch.Tensor], data: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        ids, mask = data
        logits = torch.func.functional_call(model, params, (ids[None],)).logits
        from sample_effect.objectives.losses import sft_sequence_loss

        return sft_sequence_loss(logits, ids[None], mask[None])[0]

    task = AttributionTask(loss_func=loss_func, model=model, checkpoints=model.state_dict())
    flat, _ = task.get_param()
    grad_fn = task.get_grad_loss_func(in_dims=(None, 0))
    gflat = torch.cat([w.target[n].flatten() for n, _ in model.named_parameters()]).double()

    def run() -> Values:
        g = grad_fn(flat, (w.ids, w.mask))
        return {"dot": (g.detach().double() @ gflat).numpy()}

    return run


def run_trak(w: Workload) -> Callable[[], Values]:
    """TRAK (traker): FunctionalGradientComputer.compute_per_sample_grad, no projection."""
    from trak.gradient_computers import FunctionalGradientComputer
    from trak.modelout_functions import AbstractModelOutput

    from sample_effect.objectives.losses import sft_sequence_loss

    class LossOutput(AbstractModelOutput):
        """The per-example loss as TRAK's model output (TRAK's own LM outputs are margins)."""

        def __init__(self) -> None:
            super().__init__()

        def get_output(self, model, weights, buffers, ids, mask):  # type: ignore[no-untyped-def]
            logits = torch.func.functional_call(model, (weights, buffers), (ids[None],)).logits
            return sft_sequence_loss(logits, ids[None], mask[None])[0]

        def get_out_to_loss_grad(self, model, weights, buffers, batch):  # type: ignore[no-untyped-def]
            return torch.ones(batch[0].shape[0], 1)

    model = copy.deepcopy(w.model)
    n_params = sum(p.numel() for p in model.parameters())
    gc = FunctionalGradientComputer(model, LossOutput(), n_params, torch.float32, torch.device("cpu"))

    def run() -> Values:
        return {"dot": _flat_dot(w, gc.compute_per_sample_grad((w.ids, w.mask)))}

    return run


def run_kronfluence(w: Workload) -> Callable[[], Values]:
    """Kronfluence: identity strategy, pairwise scores (target batch x batch), averaged over queries."""
    import logging

    from kronfluence.analyzer import Analyzer, prepare_model
    from kronfluence.arguments import FactorArguments, ScoreArguments
    from kronfluence.task import Task

    from sample_effect.objectives.losses import sft_sequence_loss

    mods = sorted({n.removeprefix("model.").rsplit(".", 1)[0] for n in w.linear_params})
    mods = [f"model.{m}" for m in mods]

    class LMTask(Task):
        """Summed per-example SFT loss; the measurement is the same loss (query = target batch)."""

        def compute_train_loss(self, batch: Any, model: torch.nn.Module, sample: bool = False) -> torch.Tensor:
            ids, mask = batch
            return sft_sequence_loss(model(input_ids=ids).logits, ids, mask).sum()

        def compute_measurement(self, batch: Any, model: torch.nn.Module) -> torch.Tensor:
            return self.compute_train_loss(batch, model)

        def get_influence_tracked_modules(self) -> list[str]:
            return mods

    class Pairs(torch.utils.data.Dataset):
        """(ids, mask) rows."""

        def __init__(self, ids: torch.Tensor, mask: torch.Tensor) -> None:
            self.ids, self.mask = ids, mask

        def __len__(self) -> int:
            return self.ids.shape[0]

        def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
            return self.ids[i], self.mask[i]

    task = LMTask()
    model = prepare_model(copy.deepcopy(w.model), task)
    tmp = tempfile.mkdtemp(prefix="kronfluence-")
    analyzer = Analyzer("bench", model, task, cpu=True, disable_tqdm=True, output_dir=tmp,
                        log_level=logging.WARNING)
    train, query = Pairs(w.ids, w.mask), Pairs(w.target_ids, w.target_mask)
    fargs = FactorArguments(strategy="identity")
    analyzer.fit_all_factors("identity", train, per_device_batch_size=len(train), factor_args=fargs)
    counter = [0]

    def run() -> Values:
        counter[0] += 1
        name = f"s{counter[0]}"
        analyzer.compute_pairwise_scores(
            name, "identity", query, train, per_device_query_batch_size=len(query),
            per_device_train_batch_size=len(train), score_args=ScoreArguments(), overwrite_output_dir=True)
        scores = analyzer.load_pairwise_scores(name)
        return {"dot_linear": scores["all_modules"].double().mean(0).numpy()}

    return run


def make_runner(method: str, w: Workload) -> Callable[[], Values | None]:
    """The callable for `method` (the floor reuses benchmarks/per_example.py's)."""
    if method == "floor":
        return per_example_runner("floor", w.model, w.params, w.exs, w.target)
    if method == "loop":
        return run_loop(w)
    if method.startswith("se_"):
        return run_sample_effect(w, method)
    return {"opacus": run_opacus, "opacus_ghost": run_opacus_ghost, "bergson": run_bergson,
            "dattri": run_dattri, "trak": run_trak, "kronfluence": run_kronfluence}[method](w)


def agreement(w: Workload, values: Values | None) -> dict[str, Any]:
    """Max per-example relative error against the naive loop, for each quantity the method gave."""
    if not values:
        return {}
    out: dict[str, Any] = {}
    for key, v in values.items():
        ref = w.ref[key]
        denom = np.maximum(np.abs(ref), 1e-12 * np.abs(ref).max())
        out[key] = float(np.max(np.abs(np.asarray(v, dtype=np.float64) - ref) / denom))
    return out


def paired_times(floor: Callable[[], Any], fn: Callable[[], Any], repeats: int) -> tuple[float, float]:
    """Median seconds of `fn` and of the floor, timed alternately (after one warm-up of each).

    The machine is shared, so each method's ratio uses the floor timed next to it.
    """
    floor()
    fn()
    tf, tm = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        floor()
        t1 = time.perf_counter()
        fn()
        t2 = time.perf_counter()
        tf.append(t1 - t0)
        tm.append(t2 - t1)
    return statistics.median(tm), statistics.median(tf)


def _reason(exc: BaseException) -> str:
    msg = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {msg[0][:300] if msg else ''}"


def worker(method: str, quick: bool, threads: int) -> None:
    """Run one method once in a fresh process; print {peak_mb, base_mb} or {error}."""
    torch.set_num_threads(threads)
    w = build(quick)
    if method == "se_clip":
        reference(w)  # the clip threshold comes from the reference norms
    try:
        run = make_runner(method, w)
        base = _status_mb("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")
        run()
        print(json.dumps({"peak_mb": _status_mb("VmHWM"), "base_mb": base}))
    except Exception as exc:
        print(json.dumps({"error": _reason(exc)}))


def version(dist: str) -> str | None:
    """Installed version of a distribution, or None."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes, one repeat (a smoke test)")
    ap.add_argument("--repeats", type=int, default=None, help="timed repeats per method (default 5; quick 1)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for every method")
    ap.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of: " + ", ".join(METHODS))
    ap.add_argument("--no-memory", action="store_true", help="skip the per-method memory subprocesses")
    ap.add_argument("--out", default=None, help="default benchmarks/results/peers.json (quick: peers_quick.json)")
    ap.add_argument("--worker", metavar="METHOD", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args.quick, args.threads)
        return
    torch.set_num_threads(args.threads)
    repeats = args.repeats or (1 if args.quick else 5)
    methods = [m for m in args.methods.split(",") if m]
    if "floor" not in methods:
        methods.insert(0, "floor")
    out_path = Path(args.out or f"benchmarks/results/peers{'_quick' if args.quick else ''}.json")
    w = build(args.quick)
    reference(w)
    s = sizes(args.quick)
    n_params = sum(p.numel() for p in w.params.values())
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}
    records: list[dict[str, Any]] = []
    floor_fn = make_runner("floor", w)
    for m in methods:
        rec: dict[str, Any] = {"method": m, "library": PEERS.get(m, "sample-effect" if m.startswith("se_") else "torch"),
                               "arch": "qwen2", "params": n_params, "batch": s["batch"], "seq_len": s["seq"],
                               "dtype": "float32", "note": NOTES[m]}
        if m in PEERS:
            rec["version"] = version(PEERS[m])
        last: list[Values | None] = [None]
        try:
            fn = make_runner(m, w)

            def timed(fn: Callable[[], Values | None] = fn, last: list[Values | None] = last) -> None:
                last[0] = fn()

            t, tf = paired_times(floor_fn, timed, repeats)
            rec.update(median_s=round(t, 4), floor_s=round(tf, 4), ratio_to_floor=round(t / tf, 2),
                       agreement=agreement(w, last[0]))
        except Exception as exc:
            rec.update(skipped=_reason(exc))
        if not args.no_memory and "skipped" not in rec:
            cmd = [sys.executable, __file__, "--worker", m, "--threads", str(args.threads)] + (["--quick"] if args.quick else [])
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            try:
                mem = json.loads(proc.stdout.strip().splitlines()[-1])
                if "error" in mem:
                    rec["memory_error"] = mem["error"]
                else:
                    rec.update(peak_mem_mb=round(mem["peak_mb"], 1), extra_mem_mb=round(mem["peak_mb"] - mem["base_mb"], 1))
            except (IndexError, json.JSONDecodeError):
                rec["memory_error"] = (proc.stderr.strip().splitlines() or ["no output"])[-1][:300]
        records.append(rec)
        print(json.dumps(rec), flush=True)
    print_table(records)
    meta = {"torch": torch.__version__, "threads": torch.get_num_threads(), "python": platform.python_version(),
            "quick": args.quick, "repeats": repeats, "clip": w.clip, "target": "gradient of the mean loss on "
            f"{s['n_target']} target sequences", "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "sizes": s, "cpu": cpu_info()}
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps({"meta": meta, "records": records}, indent=2) + "\n")


def print_table(records: list[dict[str, Any]]) -> None:
    """Method, seconds, ratio to floor, peak / extra memory, agreement (or why it was skipped)."""
    print(f"\n{'method':<14}{'median_s':>10}{'x floor':>9}{'peak MB':>9}{'extra MB':>9}  agreement (max rel. err. vs loop)")
    for r in records:
        if "skipped" in r:
            print(f"{r['method']:<14}{'-':>10}{'-':>9}{'-':>9}{'-':>9}  skipped: {r['skipped']}")
            continue
        agree = ", ".join(f"{k} {v:.1e}" for k, v in r.get("agreement", {}).items()) or "-"
        print(f"{r['method']:<14}{r['median_s']:>10.4f}{r['ratio_to_floor']:>9.2f}"
              f"{r.get('peak_mem_mb', float('nan')):>9.1f}{r.get('extra_mem_mb', float('nan')):>9.1f}  {agree}")


if __name__ == "__main__":
    main()
