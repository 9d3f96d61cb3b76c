"""Per-example engine cost, measured side by side in one run as ratios to the floor.

The floor is one batched forward+backward of the mean loss on the same batch. Methods:
`loop` (one backward per example, the naive oracle), `vmap` (the engine's reference path, SGD),
the default fast paths `sgd`, `sgd_clip` (C = 1) and `adam` (AdamW from a fresh state), the
forward-mode path `sgd_jvp`, and `projection` (SGD updates CountSketch-projected to k = 256, written to a
cache). Peak memory is measured in a separate process, per method: its RSS high-water mark during
the method (peak_mem_mb) and that minus the RSS before it (extra_mem_mb). Writes JSON records:
method, arch, params, batch, seq_len, median_s, ratio_to_floor, ratio_to_loop, peak_mem_mb, extra_mem_mb.

    python benchmarks/per_example.py --quick --out benchmarks/results/per_example_quick.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from sample_effect.runtime.cpu import cpu_info

METHODS = ["floor", "loop", "vmap", "sgd", "sgd_jvp", "sgd_clip", "adam", "projection"]


def build(arch: str, batch: int, seq: int):  # type: ignore[no-untyped-def]
    from transformers import AutoModelForCausalLM

    from sample_effect.data.examples import TokenizedExample
    from sample_effect.models.loading import prepare_model, select_parameters
    from sample_effect.models.tiny import tiny_config

    torch.manual_seed(0)
    cfg = tiny_config(arch, vocab_size=4096, hidden=256, layers=4, heads=4, max_len=max(512, seq))
    model = prepare_model(AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").float())
    params = select_parameters(model)
    gen = torch.Generator().manual_seed(0)
    exs = [TokenizedExample(f"e{i}", [torch.randint(0, 4096, (seq,), generator=gen)], [seq // 4]) for i in range(batch)]
    target = {n: torch.randn(p.shape, generator=gen) for n, p in params.items()}
    return model, params, exs, target


def runner(method: str, model, params, exs, target):  # type: ignore[no-untyped-def]
    from sample_effect.data.examples import pad_sequences
    from sample_effect.engine.core import ComputeConfig
    from sample_effect.engine.vectors import TargetVector
    from sample_effect.objectives.losses import sft_sequence_loss
    from sample_effect.scoring.effects import compute_effects
    from sample_effect.update.optim import UpdateConfig

    ids, mask = pad_sequences([e.sequences[0] for e in exs], [e.response_starts[0] for e in exs])
    leaves = list(params.values())
    if method == "floor":
        def run() -> None:
            loss = sft_sequence_loss(model(input_ids=ids).logits, ids, mask).mean()
            torch.autograd.grad(loss, leaves)
    elif method == "loop":
        def run() -> None:
            for i in range(ids.shape[0]):
                loss = sft_sequence_loss(model(input_ids=ids[i : i + 1]).logits, ids[i : i + 1], mask[i : i + 1])[0]
                g = torch.autograd.grad(loss, leaves)
                sum((a * target[n]).sum() for a, n in zip(g, params))
    elif method == "projection":
        import tempfile

        from sample_effect.engine.projection import ProjectionConfig
        from sample_effect.store.projection import project_examples

        compute = ComputeConfig(batch_size=len(exs), memory_budget=None, progress=False)

        def run() -> None:
            with tempfile.TemporaryDirectory() as d:
                project_examples(model, params, exs, d, UpdateConfig("sgd"), ProjectionConfig(dim=256, kind="countsketch"), compute=compute)
    else:
        cfg = {"vmap": UpdateConfig("sgd"), "sgd": UpdateConfig("sgd"), "sgd_jvp": UpdateConfig("sgd"),
               "sgd_clip": UpdateConfig("sgd", clip=1.0), "adam": UpdateConfig("adamw")}[method]
        tv = TargetVector(target, "bench")
        compute = ComputeConfig(batch_size=len(exs), memory_budget=None, progress=False,
                                method={"sgd_jvp": "jvp", "vmap": "vmap"}.get(method, "auto"))

        def run() -> None:
            compute_effects(model, params, exs, tv, cfg, compute=compute)
    return run


def time_it(run, repeats: int) -> float:  # type: ignore[no-untyped-def]
    run()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def worker(arch: str, batch: int, seq: int) -> None:
    """Run every method once in this process; print {method: [peak RSS, RSS before]} (MB).

    Before each method the RSS high-water mark is reset (Linux: writing 5 to /proc/self/clear_refs),
    so each peak is that method's own; large tensors are returned to the OS when freed, so one
    method's memory does not count toward the next. Elsewhere ru_maxrss (whole-process) is reported.
    """
    model, params, exs, target = build(arch, batch, seq)
    out = {}
    for method in METHODS:
        run = runner(method, model, params, exs, target)
        base = _status_mb("VmRSS")
        try:
            Path("/proc/self/clear_refs").write_text("5")
            reset = True
        except OSError:
            reset = False
        run()
        peak = _status_mb("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        out[method] = [peak, base]
    print(json.dumps(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer cases and repeats (under 2 minutes)")
    ap.add_argument("--out", default="benchmarks/results/per_example.json")
    ap.add_argument("--worker", nargs=3, metavar=("ARCH", "BATCH", "SEQ"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        a, b, s = args.worker
        worker(a, int(b), int(s))
        return
    torch.set_num_threads(torch.get_num_threads())
    if args.quick:
        cases, repeats = [("gpt2", 16, 32), ("qwen2", 16, 32), ("gpt2", 64, 32)], 2
    else:
        cases = [(a, b, s) for a in ("gpt2", "qwen2") for b in (16, 64) for s in (32, 128, 512)]
        repeats = 5
    records = []
    for arch, batch, seq in cases:
        model, params, exs, target = build(arch, batch, seq)
        n_params = sum(p.numel() for p in params.values())
        timings = {m: time_it(runner(m, model, params, exs, target), repeats) for m in METHODS}
        # glibc would otherwise raise its mmap threshold after the first large free and keep freed
        # blocks in the heap, so one method's memory would hide the next one's; a fixed threshold
        # returns every large tensor to the OS when it is freed.
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}
        proc = subprocess.run([sys.executable, __file__, "--worker", arch, str(batch), str(seq)],
                              capture_output=True, text=True, check=True, env=env)
        mem = json.loads(proc.stdout.strip().splitlines()[-1])
        for m in METHODS:
            peak, base = mem[m]
            rec = {"method": m, "arch": arch, "params": n_params, "batch": batch, "seq_len": seq,
                   "median_s": round(timings[m], 4), "ratio_to_floor": round(timings[m] / timings["floor"], 3),
                   "ratio_to_loop": round(timings[m] / timings["loop"], 3),
                   "peak_mem_mb": round(peak, 1), "extra_mem_mb": round(peak - base, 1)}
            records.append(rec)
            print(json.dumps(rec), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    meta = {"torch": torch.__version__, "threads": torch.get_num_threads(), "python": platform.python_version(),
            "quick": args.quick, "cpu": cpu_info()}
    Path(args.out).write_text(json.dumps({"meta": meta, "records": records}, indent=2) + "\n")


if __name__ == "__main__":
    main()
