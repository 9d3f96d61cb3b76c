"""predict-rl peak memory against the number of prompts, each size in a fresh process (issue case: a 7.4M GPT-2).

A GPT-2 built from a config (4 layers, width 384, 7.4M parameters, float32), a loss target, groups of
4 rollouts of 8 new tokens, 4 prompts per step, a parity reward (so most groups have reward variance),
AdamW and SGD, both clipped at 1.0, every noise term on. Peak RSS (ru_maxrss) of a fresh process per
(rule, prompts); the ratio largest / smallest is what `tests/growth/test_rl_memory.py` bounds at 1.3.

    python benchmarks/rl_memory.py --out benchmarks/results/rl_memory.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, resource, sys, time, warnings
sys.path.insert(0, sys.argv[3])
import torch
from conftest import CORPUS, TARGET, TRAIN
from sample_effect import UpdateConfig
from sample_effect.data.examples import examples_from_records, tokenize_examples
from sample_effect.engine.core import ComputeConfig
from sample_effect.growth.rl import predict_rl
from sample_effect.models.tiny import build_tiny_model, train_tokenizer
from sample_effect.rollouts.prompts import RLPrompt
from sample_effect.targets.core import LossTarget

def parity(prompt, completion, answer, finished=True):
    return float(sum(map(ord, completion)) % 2)

n, rule = int(sys.argv[1]), sys.argv[2]
torch.set_num_threads(1)
tok = train_tokenizer(CORPUS * 5, vocab_size=320)
model = build_tiny_model("gpt2", tok, torch.float32, seed=0, hidden=384, layers=4)
tgt, _ = tokenize_examples(examples_from_records(list(enumerate(TARGET[:1], 1))), tok)
prompts = [RLPrompt(f"p{i}", TRAIN[i % len(TRAIN)]["prompt"] + f" {i}", "") for i in range(n)]
t0 = time.perf_counter()
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    rec = predict_rl(model, tok, prompts, parity, LossTarget(tgt), UpdateConfig(rule, lr=1e-3, clip=1.0), group_size=4,
                     max_new_tokens=8, prompts_per_step=4, compute=ComputeConfig(progress=False), n_boot=20).record
print(json.dumps({"prompts": n, "rule": rule, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "parameters": sum(p.numel() for p in model.parameters()), "zero_variance_groups": rec["zero_variance_groups"],
                  "seconds": time.perf_counter() - t0}))
"""


def main() -> None:
    """Run every (rule, prompts) in a fresh process, print the table and write the JSON."""
    from sample_effect.runtime.cpu import cpu_info

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompts", default="16,128")
    p.add_argument("--rules", default="adamw,sgd")
    p.add_argument("--out", default="benchmarks/results/rl_memory.json")
    a = p.parse_args()
    tests = str(Path(__file__).resolve().parents[1] / "tests")
    rows = []
    for rule in a.rules.split(","):
        for n in (int(x) for x in a.prompts.split(",")):
            run = subprocess.run([sys.executable, "-c", CHILD, str(n), rule, tests], capture_output=True, text=True,
                                 env={**os.environ, "OMP_NUM_THREADS": "1"}, check=True)
            rows.append(json.loads(run.stdout.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
    ratios = {}
    for rule in a.rules.split(","):
        peaks = [r["peak_rss_mb"] for r in rows if r["rule"] == rule]
        ratios[rule] = max(peaks) / min(peaks)
        print(f"{rule}: peak RSS {min(peaks):.0f} -> {max(peaks):.0f} MB, ratio {ratios[rule]:.3f}")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"rows": rows, "ratio_max_over_min": ratios, "cpu": cpu_info()}, indent=1) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
