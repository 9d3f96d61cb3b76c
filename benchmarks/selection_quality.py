"""Selection benchmark: fine-tune on the top-k of each attribution method vs random-k vs bottom-k, on one pool.

Every method's [n, T] score matrix (larger = predicted to lower target example j's loss more) picks
its top-k and bottom-k three ways (--aggregate): by the mean over the target examples, by the max
(LESS's aggregation) and round-robin over the target examples (`top_k_indices`); they are
fine-tuned from the same base with the same recipe as the LDS retrains, next to --random seeded
random k-subsets. Reported per method: the mean target loss (and greedy accuracy on the target
prompts) after training, the random runs' mean, sd and 95% prediction interval, and whether top-k
lies beyond it (`sample_effect.validation.selection.selection_verdict`).

Score matrices come from a `validate lds` directory (its cache/effects-METHOD-*.npy: sgd, sgd-clip,
adamw, adamw-trajectory) and from a directory of outside scores (benchmarks/attribution_quality.py
writes OUT/scores/METHOD.npy). Each fine-tune is cached as OUT/runs/LABEL.json, so a rerun resumes.

    OMP_NUM_THREADS=1 python benchmarks/selection_quality.py --lds runs/lds/lds-m48-r2 \\
        --scores runs/lds/peers/scores --out runs/lds/selection --results benchmarks/results/selection_quality.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from sample_effect.data.examples import load_examples, tokenize_examples
from sample_effect.io import atomic_open
from sample_effect.models.loading import load_model
from sample_effect.models.registry import resolve_model
from sample_effect.rollouts.rewards import get_reward
from sample_effect.runtime.cpu import cpu_info
from sample_effect.training import SFTConfig, train_sft
from sample_effect.training.common import adamw_update
from sample_effect.validation.selection import selection_verdict, top_k_indices


def score_files(lds_dir: Path | None, scores_dir: Path | None) -> dict[str, Path]:
    """METHOD -> its [n, T] (or [n]) score file: the lds cache's effect matrices, then the outside scores."""
    out: dict[str, Path] = {}
    if lds_dir is not None:
        for f in sorted((lds_dir / "cache").glob("effects-*.npy")):
            m = re.fullmatch(r"effects-(.+)-[0-9a-f]{16}\.npy", f.name)
            if m:
                out[f"sample-effect {m.group(1)}"] = f
    if scores_dir is not None:
        for f in sorted(scores_dir.glob("*.npy")):
            out[f.stem] = f
    return out


def train_one(label: str, ids: list[str], ctx: dict[str, Any]) -> dict[str, Any]:
    """Fine-tune the base on `ids` (cached as OUT/runs/LABEL.json); the target loss and accuracy at the end."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", label)
    f = ctx["out"] / "runs" / ctx["key"] / f"{safe}.json"
    if f.exists():
        rec = json.loads(f.read_text())
        if rec["ids"] == ids:
            return rec
    model, tok = load_model(ctx["model"], "float32", device="cpu")
    torch.manual_seed(ctx["cfg"].seed)
    t0 = time.perf_counter()
    df = train_sft(model, tok, [ctx["pool"][ctx["index"][i]] for i in ids], ctx["cfg"], eval_examples=ctx["target"],
                   eval_prompts=ctx["prompts"], reward=ctx["reward"], progress=False)
    last = df.iloc[-1]
    rec = {"label": label, "ids": ids, "target_loss_end": float(last["eval_loss"]),
           "target_loss_start": float(df["eval_loss"].iloc[0]), "seconds": time.perf_counter() - t0}
    if "eval_accuracy" in df:
        rec["accuracy_end"] = float(last["eval_accuracy"])
    f.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(f) as fh:
        json.dump(rec, fh)
    print(f"{label}: target loss {rec['target_loss_end']:.4f}" + (f", accuracy {rec['accuracy_end']:.3f}"
                                                                  if "accuracy_end" in rec else ""), flush=True)
    return rec


def main(argv: list[str] | None = None) -> None:
    """Rank by every method, fine-tune top-k / bottom-k / random-k, write the JSON and print the table."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny")
    p.add_argument("--data", default="runs/lds/data/pool.jsonl")
    p.add_argument("--target-data", default="runs/lds/data/target.jsonl")
    p.add_argument("--lds", default=None, help="a `validate lds` output directory (its cached effect matrices)")
    p.add_argument("--scores", default=None, help="a directory of outside METHOD.npy score matrices")
    p.add_argument("--k", type=int, default=55)
    p.add_argument("--random", type=int, default=6, help="random k-subsets (default 6)")
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--epochs", type=float, default=4.0, help="passes over the k examples (default 4: enough for the "
                   "greedy accuracy to move on tiny)")
    p.add_argument("--aggregate", default="mean,max,round-robin",
                   help="how a [n, T] matrix picks its top-k (sample_effect.validation.selection.top_k_indices)")
    p.add_argument("--accuracy", action="store_true", help="also greedy accuracy on the target prompts (kk reward)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/lds/selection")
    p.add_argument("--results", default="benchmarks/results/selection_quality.json")
    a = p.parse_args(argv)
    files = score_files(Path(a.lds) if a.lds else None, Path(a.scores) if a.scores else None)
    if not files:
        raise SystemExit("no score files found; pass --lds and/or --scores")
    model_path = str(resolve_model(a.model))
    _, tok = load_model(model_path, "float32", device="cpu")
    raw_target = load_examples(a.target_data)
    pool = tokenize_examples(load_examples(a.data), tok)[0]
    target = tokenize_examples(raw_target, tok)[0]
    prompts = [(e.prompt, str(e.records[0]["answer"])) for e in raw_target] if a.accuracy else None
    cfg = SFTConfig(update=adamw_update(a.lr, 1.0, 0.0), batch_size=a.batch_size, epochs=a.epochs, seed=a.seed,
                    eval_max_new_tokens=48).validate()
    key = hashlib.sha256(json.dumps([asdict(cfg), model_path, a.data, a.target_data, a.accuracy],
                                    default=str).encode()).hexdigest()[:12]  # the recipe the cached runs were made with
    ctx = {"key": key, "out": Path(a.out), "model": model_path, "pool": pool, "target": target, "prompts": prompts,
           "reward": get_reward("kk") if a.accuracy else None, "cfg": cfg, "index": {e.id: i for i, e in enumerate(pool)}}
    ids = [e.id for e in pool]
    rng = np.random.default_rng(a.seed)
    randoms = [train_one(f"random-{a.k}-{s}", sorted(rng.choice(ids, a.k, replace=False).tolist()), ctx)
               for s in range(a.random)]
    rows, methods = [], {}
    for name, f in files.items():
        s = np.load(f)
        if len(s) != len(pool):
            print(f"skipping {name}: {len(s)} scores for {len(pool)} examples")
            continue
        for how in (a.aggregate.split(",") if s.ndim == 2 and s.shape[1] > 1 else ["mean"]):
            label = name if how == "mean" else f"{name} [{how}]"
            top = train_one(f"{label} top-{a.k}", [ids[i] for i in top_k_indices(s, a.k, how)], ctx)
            bottom = train_one(f"{label} bottom-{a.k}", [ids[i] for i in top_k_indices(s, a.k, how, largest=False)], ctx)
            frame = pd.DataFrame([{**top, "group": "top"}, {**bottom, "group": "bottom"},
                                  *[{**r, "group": "random"} for r in randoms]])
            verdict = selection_verdict(frame)
            methods[label] = {"top": {k: top[k] for k in top if k != "ids"},
                              "bottom": {k: bottom[k] for k in bottom if k != "ids"},
                              "verdict": verdict, "score_file": str(f), "aggregate": how}
            loss = verdict["target_loss_end"]
            rows.append((label, top["target_loss_end"], bottom["target_loss_end"], loss["random_mean"],
                         loss["random_sd"], loss["random_prediction_interval95"], loss["top_beyond_prediction_interval"],
                         top.get("accuracy_end"), bottom.get("accuracy_end")))
    rnd_acc = [r["accuracy_end"] for r in randoms if "accuracy_end" in r]
    doc = {"k": a.k, "pool": len(pool), "target": len(target), "config": {"lr": a.lr, "batch_size": a.batch_size,
           "epochs": a.epochs, "clip": 1.0, "optimizer": "adamw", "seed": a.seed},
           "random": [{k: r[k] for k in r if k != "ids"} for r in randoms], "methods": methods, "cpu": cpu_info()}
    Path(a.results).parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(a.results) as fh:
        json.dump(doc, fh, indent=1, default=str)
    print(f"\nk = {a.k} of {len(pool)}; random-{a.k}: {len(randoms)} draws"
          + (f", accuracy mean {np.mean(rnd_acc):.3f}" if rnd_acc else ""))
    print("| method | top-k target loss | bottom-k | random mean (sd) | random 95% PI | top beyond PI | top-k acc | bottom-k acc |")
    print("|---|---|---|---|---|---|---|---|")
    for name, top, bottom, mean, sd, pi, beyond, tacc, bacc in rows:
        acc = f"{tacc:.3f} | {bacc:.3f}" if tacc is not None else "- | -"
        print(f"| {name} | {top:.4f} | {bottom:.4f} | {mean:.4f} ({sd:.4f}) | [{pi[0]:.4f}, {pi[1]:.4f}] | "
              f"{'yes' if beyond else 'no'} | {acc} |")
    print(f"wrote {a.results}")


if __name__ == "__main__":
    main()
