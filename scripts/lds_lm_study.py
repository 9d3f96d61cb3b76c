#!/usr/bin/env python
"""Attribution quality, task (b): plain language modelling. `validate lds` on a pool of unprompted text documents.

Every document is a line {"id", "prompt": "", "response": TEXT}: the loss is the mean next-token
loss over the whole text (the first token has no context), as in plain LM pre-training. The pool
mixes four kinds of text the toolkit generates, so that some documents help the target and some
do not:

- `puzzle`: a Knights-and-Knaves puzzle followed by its short worked solution (clean text);
- `shuffled`: the same kind of puzzle text with its words shuffled (the vocabulary without the grammar);
- `long`: a puzzle with its long, case-by-case solution;
- `arith`: sentences of small additions and comparisons (another domain, same tokenizer).

The target is the loss of T held-out clean puzzle texts. The base model is `tiny-small` (a 685K
parameter Qwen2 pre-trained on K&K text); every subset is trained with AdamW, batch 4, clip 1.0, one
epoch. Everything is cached, so a rerun resumes.

    python scripts/lds_lm_study.py --out runs/lds-lm --quick     # 16 subsets, 1 seed
    python scripts/lds_lm_study.py --out runs/lds-lm             # 32 subsets, 2 seeds
"""
from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
from pathlib import Path


def kk(out: Path, people: int, n: int, seed: int, style: str, python: str) -> list[dict]:
    """Puzzles from `sample-effect kk`, read back."""
    if not out.exists():
        subprocess.run([python, "-m", "sample_effect", "kk", "--people", str(people), "--n", str(n), "--seed", str(seed),
                        "--style", style, "--id-prefix", out.stem, "--out", str(out), "--quiet"], check=True)
    return [json.loads(x) for x in out.read_text().splitlines()]


def arithmetic(n: int, seed: int) -> list[str]:
    """Short sentences of additions and comparisons with small numbers, seeded."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        parts = []
        for _ in range(rng.randint(3, 6)):
            a, b = rng.randint(1, 40), rng.randint(1, 40)
            parts.append(rng.choice([f"{a} plus {b} is {a + b}.", f"{max(a, b)} is more than {min(a, b)}." if a != b
                                     else f"{a} equals {b}.", f"Take {a} and add {b}: the sum is {a + b}."]))
        out.append(" ".join(parts))
    return out


def shuffled(text: str, rng: random.Random) -> str:
    words = text.split()
    rng.shuffle(words)
    return " ".join(words)


def doc(i: str, text: str) -> dict:
    return {"id": i, "prompt": "", "response": text}


def build_data(q: Path, per_kind: int, targets: int, python: str) -> tuple[Path, Path]:
    """pool.jsonl (4 kinds x per_kind documents) and target.jsonl (held-out clean puzzle texts)."""
    q.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    half = per_kind // 2
    clean = kk(q / "kk-short-2p.jsonl", 2, half, 40_002, "short-cot", python) + \
        kk(q / "kk-short-3p.jsonl", 3, per_kind - half, 40_003, "short-cot", python)
    messy = kk(q / "kk-shuf-2p.jsonl", 2, half, 41_002, "short-cot", python) + \
        kk(q / "kk-shuf-3p.jsonl", 3, per_kind - half, 41_003, "short-cot", python)
    long = kk(q / "kk-long-2p.jsonl", 2, half, 42_002, "long-cot", python) + \
        kk(q / "kk-long-3p.jsonl", 3, per_kind - half, 42_003, "long-cot", python)
    held = kk(q / "kk-target-2p.jsonl", 2, targets // 2, 43_002, "short-cot", python) + \
        kk(q / "kk-target-3p.jsonl", 3, targets - targets // 2, 43_003, "short-cot", python)
    pool = ([doc(f"puzzle-{i}", r["prompt"] + r["response"]) for i, r in enumerate(clean)]
            + [doc(f"shuffled-{i}", shuffled(r["prompt"] + r["response"], rng)) for i, r in enumerate(messy)]
            + [doc(f"long-{i}", r["prompt"] + r["response"]) for i, r in enumerate(long)]
            + [doc(f"arith-{i}", t) for i, t in enumerate(arithmetic(per_kind, 44_000))])
    target = [doc(f"target-{i}", r["prompt"] + r["response"]) for i, r in enumerate(held)]
    for name, rows in (("pool.jsonl", pool), ("target.jsonl", target)):
        (q / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return q / "pool.jsonl", q / "target.jsonl"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/lds-lm")
    p.add_argument("--python", default=sys.executable)
    p.add_argument("--per-kind", type=int, default=50, help="documents of each kind in the pool (default 50)")
    p.add_argument("--targets", type=int, default=16)
    p.add_argument("--quick", action="store_true", help="16 subsets, 1 seed")
    p.add_argument("--subsets", type=int, default=32)
    p.add_argument("--runs", type=int, default=2)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--methods", default="sgd,sgd-clip,adamw,adamw-trajectory")
    p.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more `validate lds` arguments (e.g. --scores)")
    a = p.parse_args(argv)
    pool, target = build_data(Path(a.out) / "data", a.per_kind, a.targets, a.python)
    subsets, runs = (16, 1) if a.quick else (a.subsets, a.runs)
    out = Path(a.out) / f"lds-m{subsets}-r{runs}"
    cmd = [a.python, "-m", "sample_effect", "validate", "lds", "--model", "tiny-small", "--data", str(pool),
           "--target-data", str(target), "--subsets", str(subsets), "--runs", str(runs), "--fraction", "0.5",
           "--epochs", "1", "--lr", str(a.lr), "--batch-size", "4", "--max-grad-norm", "1.0", "--seed", "0",
           "--device", "cpu", "--methods", a.methods, "--out", str(out), "--overwrite", *a.extra]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


if __name__ == "__main__":
    main()
