"""Peer attribution libraries judged by `sample-effect validate lds` on the same cached retrains.

Every method scores the SAME pool (runs/lds/data/pool.jsonl, 220 SFT examples) toward each of the
16 held-out target examples (runs/lds/data/target.jsonl) on the built-in `tiny` Qwen2 model,
with the project's per-example loss (mean response-token cross-entropy, `sft_sequence_loss`),
at the checkpoints of one 28-step AdamW run on the whole pool (checkpoint-7/14/21 and final, the
`adamw-trajectory` run of `validate lds`). Each score matrix is [n_pool, n_target] float64, larger =
training on pool example i is predicted to lower target j's loss more:

    trak                  traker TRAKer, loss as the model output, BasicProjector, ensembled over checkpoints
    kronfluence-ekfac     Kronfluence pairwise scores, EK-FAC, Linear modules of the base model
    kronfluence-identity  the same with the identity strategy (a plain gradient inner product)
    dattri-graddot        dattri TracInAttributor at the final checkpoint, weight 1, raw gradients
    dattri-gradcos        the same with normalized gradients (cosine)
    dattri-tracin         dattri TracInAttributor over checkpoint-7/14/21/final, weights = their lrs
    bergson               bergson InMemoryCollector with its default IndexConfig, inner product
    less                  LESS (Xia et al. 2024), written here: Adam-preconditioned pool gradients
                          (one AdamW step from each saved state) vs SGD target gradients, cosine of
                          512-dim Rademacher projections, summed over checkpoint-7/14/21 weighted by lr

Each method runs in a fresh subprocess (`--worker METHOD`) that records the scoring seconds
(time.perf_counter, checkpoint loading excluded) and the peak RSS (VmHWM). The worker scores 4
pool examples as extra targets as a sign check (self-influence should be positive and usually the
largest in its column). Scores go to OUT/scores/METHOD.npy (+ METHOD.json); an existing .npy is
reused, so a rerun resumes. Then the script copies the 96 cached retrains of runs/lds/lds-m48-r2
into runs/lds/peers-m48-r2/cache, runs `sample-effect validate lds --methods sgd --scores NAME=FILE ...`
there and writes benchmarks/results/attribution_quality.json plus a markdown table.

The checkpoints are taken from runs/lds/lds-m48-r2/cache/trajectory-*/ when that run finished;
otherwise the same run (train_sft, AdamW lr 2e-4, clip 1, batch 4, 28 steps, save every 7, seed 0)
is trained into OUT/trajectory.

Peers need their own venv that sees the main one (see benchmarks/requirements-peers.txt):

    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 taskset -c 1 .venv-peers/bin/python benchmarks/attribution_quality.py \
        --out runs/lds/attribution-quality

--quick (smaller projections, fewer checkpoints, OUT defaults to runs/lds/attribution-quality-quick)
is a smoke test; --methods picks a subset; --no-lds stops after the score files.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from attribution_peers import (
    LDS_OUT,
    LDS_RUN,
    METHODS,
    PEERS,
    POOL,
    ROOT,
    RUNNERS,
    RUNS,
    SELF,
    SUBSETS,
    TARGET,
    setup,
    trajectory,
)
from peers import _status_mb, version

# ------------------------------------------------------------------ worker and driver


def sign_check(full: np.ndarray) -> dict[str, Any]:
    """Self-influence of the SELF pool examples (the last columns): positive, and its rank in the column."""
    n_t = full.shape[1] - len(SELF)
    out = []
    for j, i in enumerate(SELF):
        col = full[:, n_t + j]
        out.append({"pool_index": i, "self_score": float(col[i]), "positive": bool(col[i] > 0),
                    "rank": int((col > col[i]).sum()) + 1, "column_max": float(col.max())})
    return {"examples": out, "all_positive": all(r["positive"] for r in out),
            "top1": sum(r["rank"] == 1 for r in out)}


def worker(method: str, run: Path, out: Path, quick: bool) -> None:
    """Score the pool with one method in this (fresh) process; write METHOD.npy and METHOD.json."""
    torch.manual_seed(0)
    s = setup(run, quick)
    Path("/proc/self/clear_refs").write_text("5")
    base = _status_mb("VmRSS")
    full, notes, t0 = RUNNERS[method](s)
    # runners return their start time (perf_counter) or, when they time pieces themselves, -seconds
    seconds = -t0 if t0 <= 0 else time.perf_counter() - t0
    full = np.asarray(full, dtype=np.float64)
    if full.shape != (len(s.pool), len(s.queries)) or not np.isfinite(full).all():
        raise RuntimeError(f"{method}: scores of shape {full.shape}, finite {np.isfinite(full).all()}")
    rec = {"method": method, "seconds": round(seconds, 2), "peak_mb": round(_status_mb("VmHWM"), 1),
           "base_mb": round(base, 1), "notes": notes, "sign_check": sign_check(full),
           "checkpoints": [p.__dict__ for p in s.points]}
    n_t = len(s.queries) - len(SELF)
    scores = out / "scores"
    scores.mkdir(parents=True, exist_ok=True)
    (scores / f"{method}.json").write_text(json.dumps(rec, indent=1) + "\n")
    np.save(scores / f"{method}.npy", full[:, :n_t])
    print(json.dumps({k: rec[k] for k in ("method", "seconds", "peak_mb", "sign_check")}), flush=True)


def retrains_ready() -> list[Path]:
    """The LDS run's retrain files when all SUBSETS x RUNS of one key exist, else []."""
    files = sorted(LDS_RUN.glob("cache/retrain-*.json"))
    keys = {f.name.rsplit("-m", 1)[0] for f in files}
    for k in keys:
        mine = [f for f in files if f.name.startswith(k + "-m")]
        if len(mine) >= SUBSETS * RUNS:
            return mine
    return []


def judge(methods: list[str], out: Path, wait_s: float) -> dict[str, Any]:
    """Copy the cached retrains, run `validate lds` with every score file, return its lds.json."""
    deadline = time.time() + wait_s
    while not (files := retrains_ready()):
        if time.time() > deadline:
            raise SystemExit(f"the {SUBSETS * RUNS} retrain files of {LDS_RUN} are not all there yet")
        time.sleep(30)
    cache = LDS_OUT / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    for f in files:
        if not (cache / f.name).exists():
            shutil.copy2(f, cache / f.name)
    cli = ROOT / ".venv/bin/sample-effect"
    cmd = [str(cli), "validate", "lds", "--model", "tiny", "--data", str(POOL), "--target-data", str(TARGET),
           "--subsets", str(SUBSETS), "--runs", str(RUNS), "--fraction", "0.5", "--epochs", "1.0", "--lr", "0.0002",
           "--batch-size", "4", "--max-grad-norm", "1.0", "--seed", "0", "--device", "cpu", "--out", str(LDS_OUT),
           "--methods", "sgd", "--quiet", "--overwrite"]
    for m in methods:
        cmd += ["--scores", f"{m}={out / 'scores' / (m + '.npy')}"]
    print(" ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)
    return json.loads((LDS_OUT / "lds.json").read_text())


def table(results: dict[str, Any]) -> str:
    """Markdown: method, LDS [95%], mean-target LDS [95%], seconds, peak MB."""
    lines = ["| method | LDS [95%] | mean target [95%] | seconds | peak MB |", "|---|---|---|---|---|"]
    for m, r in results.items():
        if "lds" not in r:
            lines.append(f"| {m} | not run: {r.get('error', '?')} | | | |")
            continue
        lo, hi = r["lds_ci95"] or [float("nan")] * 2
        mlo, mhi = r["lds_mean_target_ci95"]
        sec = "-" if r.get("seconds") is None else f"{r['seconds']:.1f}"
        mb = "-" if r.get("peak_mb") is None else f"{r['peak_mb']:.0f}"
        lines.append(f"| {m} | {r['lds']:+.3f} [{lo:+.3f}, {hi:+.3f}] | {r['lds_mean_target']:+.3f} "
                     f"[{mlo:+.3f}, {mhi:+.3f}] | {sec} | {mb} |")
    return "\n".join(lines)


def main() -> None:
    """Parse the command line; run the workers, then the judge, then write the results."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None, help="scores and the trajectory fallback (default runs/lds/attribution-quality)")
    ap.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of: " + ", ".join(METHODS))
    ap.add_argument("--quick", action="store_true", help="smaller projections, fewer checkpoints (a smoke test)")
    ap.add_argument("--no-lds", action="store_true", help="stop after the score files")
    ap.add_argument("--wait", type=float, default=3600, help="seconds to wait for the LDS run's retrains (default 3600)")
    ap.add_argument("--results", default=str(ROOT / "benchmarks/results/attribution_quality.json"))
    ap.add_argument("--worker", metavar="METHOD", help=argparse.SUPPRESS)
    ap.add_argument("--run", help=argparse.SUPPRESS)
    args = ap.parse_args()
    out = Path(args.out or ROOT / f"runs/lds/attribution-quality{'-quick' if args.quick else ''}").resolve()
    if args.worker:
        worker(args.worker, Path(args.run), out, args.quick)
        return
    methods = [m for m in args.methods.split(",") if m]
    bad = [m for m in methods if m not in RUNNERS]
    if bad:
        raise SystemExit(f"unknown method(s) {bad}; choose from {METHODS}")
    run, source = trajectory(out)
    print(f"checkpoints: {source}", flush=True)
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}
    records: dict[str, dict[str, Any]] = {}
    for m in methods:
        f = out / "scores" / f"{m}.npy"
        if not f.exists():
            cmd = [sys.executable, __file__, "--worker", m, "--run", str(run), "--out", str(out)]
            proc = subprocess.run(cmd + (["--quick"] if args.quick else []), env=env, capture_output=True, text=True)
            print(proc.stdout.strip(), flush=True)
            if proc.returncode != 0:
                err = (proc.stderr.strip().splitlines() or ["no output"])[-1][:300]
                print(f"{m}: failed: {err}", flush=True)
                records[m] = {"error": err}
                continue
        records[m] = json.loads((out / "scores" / f"{m}.json").read_text())
    done = [m for m in methods if "error" not in records[m]]
    results: dict[str, Any] = {m: {"error": r["error"]} for m, r in records.items() if "error" in r}
    lds: dict[str, Any] = {}
    if not args.no_lds and done:
        lds = judge(done, out, args.wait)
        for m in ["sgd", *done]:
            v = lds["methods"][m]
            rec = records.get(m, {"notes": "sample-effect's own SGD effects (validate lds --methods sgd)"})
            results[m] = {k: v[k] for k in ("lds", "lds_ci95", "lds_mean_target", "lds_mean_target_ci95")}
            # sgd runs inside validate lds (its effects may be cached there): no seconds or peak memory here
            results[m].update(seconds=rec.get("seconds"), peak_mb=rec.get("peak_mb"), notes=rec["notes"],
                              sign_check=rec.get("sign_check"))
    doc = {"results": results, "checkpoints": source, "lds_dir": str(LDS_OUT.relative_to(ROOT)),
           "quick": args.quick, "versions": {d: version(d) for d in [*PEERS.values(), "torch", "sample-effect"]},
           "cpu": _cpu(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
           "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "lds_setup": {k: lds.get(k) for k in ("subsets", "runs", "fraction", "pool", "target")} if lds else None}
    if lds:
        Path(args.results).parent.mkdir(parents=True, exist_ok=True)
        Path(args.results).write_text(json.dumps(doc, indent=1) + "\n")
        print(table(results))
    else:
        for m, r in records.items():
            print(m, json.dumps({k: r.get(k) for k in ("seconds", "peak_mb", "sign_check", "error")}))


def _cpu() -> Any:
    """sample-effect's CPU description."""
    from sample_effect.runtime.cpu import cpu_info

    return cpu_info()


if __name__ == "__main__":
    main()
