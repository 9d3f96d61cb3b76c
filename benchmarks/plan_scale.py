"""The engine's own plan for 1.5B and 7B models, made on the meta device (no weights, no compute).

For Qwen2.5-1.5B- and Qwen2.5-7B-shaped configs (public architecture numbers; random init on
`meta`, so nothing is downloaded or allocated), each dtype, update rule (SGD, clipped SGD, AdamW)
and sequence length, this asks the planner what `rank --explain` would print: the chunk of
sequences per backward, the expected peak memory per process, how many layers get Gram-form or
materialised norms, and the largest per-layer block. The numbers are the planner's estimates,
which `tests/` check against measured peaks on small models; docs/scaling.md plans the large
case from them.

    python benchmarks/plan_scale.py --out benchmarks/results/plan_scale.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from sample_effect.errors import SampleEffectError
from sample_effect.runtime.cpu import cpu_info

# Public configs (config.json of Qwen/Qwen2.5-1.5B and Qwen/Qwen2.5-7B).
MODELS = {
    "qwen2.5-1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                         num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "qwen2.5-7b": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                       num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False),
}
UPDATES = {"sgd": ("sgd", None), "sgd_clip": ("sgd", 1.0), "adamw": ("adamw", None)}


def meta_model(name: str, dtype: torch.dtype):  # type: ignore[no-untyped-def]
    from transformers import AutoModelForCausalLM, Qwen2Config

    from sample_effect.models.loading import prepare_model

    cfg = Qwen2Config(max_position_embeddings=32768, **MODELS[name])
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager", dtype=dtype)
    return prepare_model(model)


def plan_record(model, name: str, dtype: str, update: str, seq: int, batch: int, budget: str) -> dict:  # type: ignore[no-untyped-def]
    from sample_effect.data.examples import TokenizedExample
    from sample_effect.engine.core import ComputeConfig
    from sample_effect.engine.planner import make_plan
    from sample_effect.models.loading import select_parameters
    from sample_effect.update.optim import UpdateConfig

    params = select_parameters(model)
    exs = [TokenizedExample(f"e{i}", [torch.zeros(seq, dtype=torch.long)], [seq // 4]) for i in range(batch)]
    opt, clip = UPDATES[update]
    plan = make_plan(model, params, exs, UpdateConfig(opt, clip=clip),
                     ComputeConfig(batch_size=batch, memory_budget=budget, progress=False))
    norms: dict[str, int] = {}
    for layer in plan.layers:
        norms[layer.norm] = norms.get(layer.norm, 0) + 1
    n_params = sum(p.numel() for p in params.values())
    largest = max(params.items(), key=lambda kv: kv[1].numel())
    return {"model": name, "dtype": dtype, "update": update, "seq_len": seq, "batch": batch, "budget": budget,
            "params": n_params, "method": plan.method, "chunk": plan.chunk, "peak_gib": round(plan.peak_bytes / 2**30, 2),
            "weights_gib": round(n_params * torch.empty((), dtype=getattr(torch, dtype)).element_size() / 2**30, 2),
            "norms": norms, "largest_layer": largest[0], "largest_layer_numel": largest[1].numel()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", default="80GB", help="per-process memory budget (an H100/H200-class GPU)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--out", default="benchmarks/results/plan_scale.json")
    args = ap.parse_args()
    records = []
    for name in MODELS:
        for dtype in ("bfloat16", "float32"):
            model = meta_model(name, getattr(torch, dtype))
            for seq in (512, 2048):
                for update in UPDATES:
                    try:
                        rec = plan_record(model, name, dtype, update, seq, args.batch, args.budget)
                    except SampleEffectError as e:  # one sequence does not fit the budget: say so, go on
                        rec = {"model": name, "dtype": dtype, "update": update, "seq_len": seq, "batch": args.batch,
                               "budget": args.budget, "fits": False, "error": str(e)}
                    records.append(rec)
                    print(json.dumps(rec), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"meta": {"torch": torch.__version__, "budget": args.budget, "cpu": cpu_info()},
                                          "records": records},
                                         indent=2) + "\n")


if __name__ == "__main__":
    main()
