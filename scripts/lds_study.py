#!/usr/bin/env python
"""Attribution quality on K&K SFT: `validate lds` on a pool that mixes response styles and imitation sources.

Task (a) of the LDS benchmark, built here: the pool is N puzzles written in the three template
styles (answer-only, short-cot, long-cot), plus, when `--redistilled FILE` is given, correct
completions an RL policy wrote (`redistill` output; e.g. runs/q2g/data/start-redistilled.jsonl
from scripts/rl_starts_study.py). The target is the held-out answer (answer-only format) of T
fresh puzzles. Base model `tiny`; every subset is fine-tuned with the demo's recipe (AdamW,
batch 4, clip 1.0, constant lr). Every command goes through the CLI and is cached, so a rerun
resumes.

    python scripts/lds_study.py --out runs/lds --quick          # 16 subsets, 1 seed (about 10 minutes on 2 cores)
    python scripts/lds_study.py --out runs/lds                  # 48 subsets, 2 seeds
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from experiments import Runner, cat  # the same subprocess runner and timing records


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/lds")
    p.add_argument("--python", default=sys.executable)
    p.add_argument("--puzzles", type=int, default=60, help="puzzles per style in the pool (half 2-, half 3-person)")
    p.add_argument("--redistilled", default=None, help="redistill output to add to the pool (its first --n-redistilled)")
    p.add_argument("--n-redistilled", type=int, default=40)
    p.add_argument("--targets", type=int, default=16, help="held-out target puzzles")
    p.add_argument("--quick", action="store_true", help="16 subsets, 1 seed")
    p.add_argument("--subsets", type=int, default=48)
    p.add_argument("--runs", type=int, default=2)
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tag", default="")
    p.add_argument("--overwrite", action="store_true")
    a = p.parse_args(argv)
    R = Runner(argparse.Namespace(**(vars(a) | {"stages": "lds"})))
    q = Path(a.out) / "data"
    q.mkdir(parents=True, exist_ok=True)
    parts = []
    for style in ("answer-only", "short-cot", "long-cot"):
        for people, count in ((2, a.puzzles // 2), (3, a.puzzles - a.puzzles // 2)):
            f = q / f"pool-{style}-{people}p.jsonl"
            if not R.done(f):
                R.se("kk", "--people", people, "--n", count, "--seed", 30_000 + people, "--style", style,
                     "--id-prefix", f"pool-{style}", "--out", f, label="kk")
            parts.append(str(f))
    if a.redistilled:
        red = q / "pool-redistilled.jsonl"
        lines = Path(a.redistilled).read_text().splitlines()[: a.n_redistilled]
        red.write_text("".join(json.dumps({**json.loads(x), "id": f"redistilled-{i}"}) + "\n" for i, x in enumerate(lines)))
        parts.append(str(red))
    pool = str(q / "pool.jsonl")
    cat(parts, pool)
    tparts = []
    for people, count in ((2, a.targets // 2), (3, a.targets - a.targets // 2)):
        f = q / f"target-{people}p.jsonl"
        if not R.done(f):
            R.se("kk", "--people", people, "--n", count, "--seed", 31_000 + people, "--style", "answer-only",
                 "--id-prefix", "target", "--out", f, label="kk")
        tparts.append(str(f))
    target = str(q / "target.jsonl")
    cat(tparts, target)
    subsets, runs = (16, 1) if a.quick else (a.subsets, a.runs)
    out = Path(a.out) / f"lds-m{subsets}-r{runs}"
    if not R.done(out / "lds.json"):
        R.se("validate", "lds", "--model", "tiny", "--data", pool, "--target-data", target, "--subsets", subsets,
             "--runs", runs, "--fraction", 0.5, "--epochs", a.epochs, "--lr", a.lr, "--batch-size", 4,
             "--max-grad-norm", 1.0, "--seed", a.seed, "--out", out, label=f"lds m{subsets} r{runs}")
    doc = json.loads((out / "lds.json").read_text())
    print(f"pool {doc['pool']} examples, target {doc['target']}, {doc['subsets']} subsets x {doc['runs']} seeds; "
          f"retrains {doc['retrain_seconds']:.0f} s")
    print("| method | LDS [95%] | mean-target Spearman [95%] | seconds |")
    print("|---|---|---|---|")
    for name, v in doc["methods"].items():
        lds = "-" if v["lds"] is None else f"{v['lds']:+.3f} [{v['lds_ci95'][0]:+.3f}, {v['lds_ci95'][1]:+.3f}]"
        lo, hi = v["lds_mean_target_ci95"]
        print(f"| {name} | {lds} | {v['lds_mean_target']:+.3f} [{lo:+.3f}, {hi:+.3f}] | {v['seconds']:.0f} |")


if __name__ == "__main__":
    main()
