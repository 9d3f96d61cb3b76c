"""Time `project_examples` alone (CountSketch, k = 256) on the `per_example.py --quick` batch.

Run it under two checkouts to compare them side by side: the package imported is whichever is on
the path (e.g. an old tree through PYTHONPATH and a sitecustomize that drops the editable
finder). One warm-up, then `--repeats` timings; prints and appends one JSON record to `--out`.

    python benchmarks/projection_ab.py --arch gpt2 --label new --out benchmarks/results/redesign/projection_ab.jsonl
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="gpt2", choices=["gpt2", "qwen2"])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--label", default="")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    from transformers import AutoModelForCausalLM

    import sample_effect

    try:  # the layout after the redesign
        from sample_effect.data.examples import TokenizedExample
        from sample_effect.engine.core import ComputeConfig
        from sample_effect.engine.projection import ProjectionConfig
        from sample_effect.models.loading import prepare_model, select_parameters
        from sample_effect.models.tiny import tiny_config
        from sample_effect.store.projection import project_examples
        from sample_effect.update.optim import UpdateConfig
    except ImportError:  # the flat layout before it (39a28a8)
        from sample_effect.optim import UpdateConfig  # type: ignore[no-redef]
        from sample_effect.projection import ProjectionConfig, project_examples  # type: ignore[no-redef]
        from sample_effect.tiny import tiny_config  # type: ignore[no-redef]

        from sample_effect.data import TokenizedExample  # type: ignore[no-redef]
        from sample_effect.engine import ComputeConfig  # type: ignore[no-redef]
        from sample_effect.models import prepare_model, select_parameters  # type: ignore[no-redef]

    torch.manual_seed(0)
    cfg = tiny_config(args.arch, vocab_size=4096, hidden=256, layers=4, heads=4, max_len=512)
    model = prepare_model(AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").float())
    params = select_parameters(model)
    gen = torch.Generator().manual_seed(0)
    exs = [TokenizedExample(f"e{i}", [torch.randint(0, 4096, (32,), generator=gen)], [8]) for i in range(16)]
    compute = ComputeConfig(batch_size=16, memory_budget=None, progress=False)

    def run() -> None:
        with tempfile.TemporaryDirectory() as d:
            project_examples(model, params, exs, d, UpdateConfig("sgd"), ProjectionConfig(dim=256, kind="countsketch"),
                             compute=compute)

    run()
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    rec = {"label": args.label, "package": str(Path(sample_effect.__file__).parent), "arch": args.arch,
           "times_s": [round(t, 4) for t in times], "median_s": round(statistics.median(times), 4)}
    print(json.dumps(rec))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "a") as f:
            f.write(json.dumps(rec) + "\n")


if __name__ == "__main__":
    main()
