"""predict-rl on a real model: SmolLM2-135M, 8 prompts x 4 rollouts x 128 new tokens, time split.

Samples the GRPO groups (`sample_groups`, KV-cached decoding) and then scores them
(`predict_rl(groups=...)`: every prompt's GRPO effect through the engine, the positive effect
with its bootstrap interval, and the noise terms with the per-prompt gradients spilled to disk),
timing each part, with the process's peak RSS. The target is the mean loss of 4 Knights-and-Knaves
answers; the update AdamW (lr 1e-5) with clipping at 1.0, as a GRPO trainer would step.

The reward is `shared_words` below: the share of the completion's words that occur in the prompt.
An untrained 135M model never writes a correct boxed Knights-and-Knaves answer, so the `kk`
reward is 0 for every rollout, every group has zero variance and there is nothing to score; a
reward with variance makes every prompt informative, which is the cost a user pays.

    python benchmarks/rl_real_model.py --out benchmarks/results/smollm2_predict_rl.json
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time
from pathlib import Path

import torch

from sample_effect.runtime.cpu import cpu_info


def shared_words(prompt: str, completion: str, answer: str, finished: bool = True) -> float:
    """Share of the completion's words found in the prompt (0 for an empty completion)."""
    words = completion.split()
    seen = set(prompt.split())
    return sum(w in seen for w in words) / len(words) if words else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--group-size", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default="benchmarks/results/smollm2_predict_rl.json")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from sample_effect.data.examples import examples_from_records, tokenize_examples
    from sample_effect.data.kk import generate_puzzles, puzzle_record
    from sample_effect.engine.core import ComputeConfig
    from sample_effect.growth.rl import predict_rl
    from sample_effect.models.loading import load_model
    from sample_effect.models.registry import resolve_model
    from sample_effect.rollouts.groups import sample_groups
    from sample_effect.rollouts.prompts import RLPrompt
    from sample_effect.targets.core import LossTarget
    from sample_effect.update.optim import UpdateConfig

    t0 = time.perf_counter()
    model, tok = load_model(resolve_model(args.model), args.dtype)
    puzzles = generate_puzzles(3, args.prompts + 4, seed=77)
    recs = [puzzle_record(p, "answer-only", seed=77) for p in puzzles]
    prompts = [RLPrompt(f"p{i}", r["prompt"], r["answer"]) for i, r in enumerate(recs[: args.prompts])]
    target, _ = tokenize_examples(examples_from_records(list(enumerate(recs[args.prompts :], 1))), tok)
    t_load = time.perf_counter() - t0

    t0 = time.perf_counter()
    groups = sample_groups(model, tok, prompts, shared_words, args.group_size, 1.0, args.max_new_tokens, seed=0,
                           progress=False)
    t_sample = time.perf_counter() - t0
    new_tokens = sum(int(r.ids.shape[0]) - r.start for g in groups for r in g)

    t0 = time.perf_counter()
    pred = predict_rl(model, tok, [], shared_words, LossTarget(target), UpdateConfig("adamw", lr=1e-5, clip=1.0),
                      groups=groups, prompts_per_step=4, n_boot=200, compute=ComputeConfig(progress=False))
    t_score = time.perf_counter() - t0
    growth = pred.growth
    out = {
        "model": args.model, "dtype": args.dtype, "params": sum(p.numel() for p in model.parameters()),
        "prompts": args.prompts, "group_size": args.group_size, "max_new_tokens": args.max_new_tokens,
        "new_tokens": new_tokens, "load_s": round(t_load, 1), "sampling_s": round(t_sample, 1),
        "scoring_s": round(t_score, 1), "scoring_share": round(t_score / (t_sample + t_score), 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "zero_variance_groups": int(pred.effects.zero_variance.sum()),
        "growth_rate": growth.growth_rate, "positive_effect": growth.positive_effect,
        "noise_effect": growth.noise_effect, "second_order_effect": growth.second_order.effect,
        "torch": torch.__version__, "threads": torch.get_num_threads(), "python": platform.python_version(),
        "cpu": cpu_info(),
    }
    print(json.dumps(out, indent=2))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
