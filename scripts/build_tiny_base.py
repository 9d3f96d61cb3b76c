"""Build the tiny default base model shipped in sample_effect/assets/tiny-kk (reproducible, CPU).

A small Qwen2-style causal LM (tied embeddings, RMSNorm, GQA) with a byte-level BPE tokenizer,
both trained from scratch on Knights-and-Knaves text written in a *base-model* format
("Question: ... Answer: ... So the answer is ..."), with no \\boxed{} answers. It therefore knows
the puzzles' language and some reasoning patterns but not the SFT answer format, which is what
a short SFT then teaches (the demo's job).

    python scripts/build_tiny_base.py --out sample_effect/assets/tiny-kk [--steps 2000]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from sample_effect.data.examples import examples_from_records, tokenize_examples
from sample_effect.data.kk import FORMAT_HINT, STYLES, generate_puzzles, quiz_text, response_text
from sample_effect.models.tiny import build_tiny_model, save_model, train_tokenizer
from sample_effect.training import SFTConfig, train_sft

CONFIG = {"arch": "qwen2", "hidden": 128, "layers": 4, "heads": 4, "max_len": 2048}
CORPUS = {2: 350, 3: 2500, 4: 1500}  # puzzles per size (2-person puzzles number about 400 in all)
SEED = 100  # the demo draws its puzzles with other seeds


def base_text(p, style: str) -> str:
    body = response_text(p, style).rsplit("\n", 1)[0] if style != "answer-only" else ""
    reasoning = (body + "\n") if body else ""
    return f"Question:\n{quiz_text(p, SEED)}\nAnswer:\n{reasoning}So the answer is: {p.answer}."


def corpus() -> list[str]:
    texts = []
    for n, count in CORPUS.items():
        styles = STYLES if n <= 2 else ("answer-only", "short-cot")  # long-cot grows fast with n
        for i, p in enumerate(generate_puzzles(n, count, seed=SEED)):
            texts.append(base_text(p, styles[i % len(styles)]))
    return texts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="sample_effect/assets/tiny-kk")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1.5e-3)
    args = ap.parse_args()
    torch.manual_seed(0)
    texts = corpus()
    # The tokenizer also sees the SFT format strings so \boxed{...} tokenises compactly.
    tok = train_tokenizer(texts + [FORMAT_HINT] * 50, vocab_size=1024)
    model = build_tiny_model(CONFIG["arch"], tok, torch.float32, seed=0, hidden=CONFIG["hidden"],
                             layers=CONFIG["layers"], heads=CONFIG["heads"], max_len=CONFIG["max_len"])
    records = [(i + 1, {"id": f"c{i}", "prompt": "", "response": t}) for i, t in enumerate(texts)]
    train, report = tokenize_examples(examples_from_records(records), tok, max_length=512)
    n_eval = 64
    t0 = time.perf_counter()
    metrics = train_sft(
        model, tok, train[n_eval:],
        SFTConfig(lr=args.lr, schedule="cosine", warmup_steps=100, batch_size=args.batch_size,
                  max_steps=args.steps, eval_every=max(1, args.steps // 10), max_grad_norm=1.0, weight_decay=0.01),
        eval_examples=train[:n_eval],
    )
    out = Path(args.out)
    save_model(model, tok, out)
    info = {
        "config": CONFIG, "corpus_puzzles": CORPUS, "seed": SEED, "steps": args.steps, "batch_size": args.batch_size,
        "lr": args.lr, "params": sum(p.numel() for p in model.parameters()), "vocab": len(tok),
        "truncated": report.n_truncated, "train_seconds": round(time.perf_counter() - t0, 1),
        "eval_loss": metrics["eval_loss"].tolist(), "eval_steps": metrics["step"].tolist(),
    }
    (out / "build_info.json").write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps(info, indent=2))


if __name__ == "__main__":
    main()
