"""Build the tiny base models shipped in sample_effect/assets (reproducible, CPU only, seeded).

Small Qwen2-style causal LMs (tied embeddings, RMSNorm, GQA) with a byte-level BPE tokenizer,
both trained from scratch on Knights-and-Knaves text written in a *base-model* format
("Question: ... Answer: ... So the answer is: ..."), with no \\boxed{} answers. A model therefore
knows the puzzles' language and the reasoning moves but not the SFT answer format, which is what
a short SFT then teaches (the demo's job).

Presets:
- `tiny` (default, assets/tiny-kk-v2): about 2.1M parameters, 2-4 person puzzles in all three
  response styles. The shipped model is four stages, each continuing the one before:

      python scripts/build_tiny_base.py --preset tiny --threads 1 --out /tmp/stage1          # 3600 steps
      python scripts/build_tiny_base.py --preset tiny --threads 1 --continue-from /tmp/stage1 \
          --steps 2000 --lr 1e-3 --out /tmp/stage2
      python scripts/build_tiny_base.py --preset tiny-sft-prompts --threads 1 --continue-from /tmp/stage2 \
          --out /tmp/stage3
      python scripts/build_tiny_base.py --preset tiny-answers --threads 1 --continue-from /tmp/stage3

  The third (`tiny-sft-prompts`) opens half of its texts with the SFT prompt (quiz plus the
  \\boxed{} format instruction) but still ends them in the base answer line. The fourth
  (`tiny-answers`, 2500 steps, 32 min on one core here) draws fresh puzzles with several seeds, half
  of them answer-only, so that the answer a short SFT starts from is a sharper one.
- `tiny-small` (assets/tiny-kk-small): the earlier 685K-parameter model, kept for fast tests.

Batches are drawn from length buckets (shuffled, seeded), so little compute goes to padding.
Progress, the eval-loss curve, the wall time and a greedy base-format accuracy per puzzle size
are printed and written to build_info.json.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import torch

from sample_effect.data.examples import examples_from_records, tokenize_examples
from sample_effect.data.kk import (
    FORMAT_HINT,
    STYLES,
    generate_puzzles,
    prompt_text,
    quiz_text,
    response_text,
)
from sample_effect.engine.core import collate
from sample_effect.models.tiny import build_tiny_model, save_model, train_tokenizer
from sample_effect.objectives.losses import example_losses, sft_sequence_loss

SEED = 100  # the demo, tests and experiments draw their puzzles with other seeds
ANSWER_HEAVY = ("answer-only", "answer-only", "short-cot", "long-cot")  # styles cycled: half answer-only

PRESETS = {
    "tiny": {
        "out": "sample_effect/assets/tiny-kk-v2",
        "model": {"arch": "qwen2", "hidden": 192, "layers": 6, "heads": 4, "max_len": 2048},
        # puzzles per size, and the styles cycled over them
        "corpus": {2: (350, STYLES), 3: (6000, STYLES), 4: (4000, STYLES)},
        "max_tokens": 640, "steps": 3600, "batch_size": 16, "lr": 1.5e-3, "warmup": 200,
    },
    # A third stage on top of `tiny` (--continue-from): half of the texts open with the SFT prompt itself
    # (the quiz plus the \\boxed{} format instruction) but still end in the base answer line, so the model
    # reasons from the prompt a user's SFT data carries, and only the boxed answer line is left for SFT.
    "tiny-sft-prompts": {
        "out": "sample_effect/assets/tiny-kk-v2",
        "model": {"arch": "qwen2", "hidden": 192, "layers": 6, "heads": 4, "max_len": 2048},
        "corpus": {2: (390, STYLES), 3: (5000, STYLES), 4: (2500, STYLES)},
        "sft_prompt_share": 0.5,
        "max_tokens": 640, "steps": 1000, "batch_size": 16, "lr": 1e-3, "warmup": 100,
    },
    # A fourth stage on top of `tiny-sft-prompts` (--continue-from): fresh puzzles drawn with several seeds (so
    # the ~400 distinct 2-person puzzles recur with new names and wordings), half of them answer-only, to
    # sharpen the answer a short SFT starts from; half still open with the SFT prompt.
    "tiny-answers": {
        "out": "sample_effect/assets/tiny-kk-v2",
        "model": {"arch": "qwen2", "hidden": 192, "layers": 6, "heads": 4, "max_len": 2048},
        "corpus": {2: (390, ANSWER_HEAVY), 3: (2000, ANSWER_HEAVY), 4: (1500, STYLES)},
        "corpus_seeds": {2: (200, 201, 202, 203, 204, 205), 3: (210, 211, 212), 4: (220,)},
        "sft_prompt_share": 0.5,
        "max_tokens": 640, "steps": 2500, "batch_size": 16, "lr": 5e-4, "warmup": 100,
    },
    "tiny-small": {
        "out": "sample_effect/assets/tiny-kk-small",
        "model": {"arch": "qwen2", "hidden": 128, "layers": 4, "heads": 4, "max_len": 2048},
        "corpus": {2: (350, STYLES), 3: (2500, ("answer-only", "short-cot")), 4: (1500, ("answer-only", "short-cot"))},
        "max_tokens": 512, "steps": 2000, "batch_size": 16, "lr": 1.5e-3, "warmup": 100,
    },
}


def base_prompt(p, seed: int = SEED) -> str:  # type: ignore[no-untyped-def]
    """The base-format question a pre-training text starts with (and greedy evaluation prompts with)."""
    return f"Question:\n{quiz_text(p, seed)}\nAnswer:\n"


def base_text(p, style: str, sft_prompt: bool = False, seed: int = SEED) -> str:  # type: ignore[no-untyped-def]
    """One pre-training text: question, the style's reasoning without its boxed line, the plain answer.

    With sft_prompt the question is the SFT prompt (quiz plus format instruction) instead of the
    "Question: ... Answer:" wrapper; the answer line stays the base one, never \\boxed{}.
    """
    body = response_text(p, style).rsplit("\n", 1)[0] if style != "answer-only" else ""
    reasoning = (body + "\n") if body else ""
    prompt = prompt_text(p, seed) if sft_prompt else base_prompt(p, seed)
    return f"{prompt}{reasoning}So the answer is: {p.answer}."


def corpus(spec: dict, sft_prompt_share: float = 0.0, seeds: dict | None = None) -> list[str]:
    """Every pre-training text of a preset, in generation order (every k-th text in the SFT-prompt form).

    `seeds` maps a puzzle size to the generator seeds drawn from (`count` puzzles each); default SEED.
    """
    texts = []
    every = round(1 / sft_prompt_share) if sft_prompt_share > 0 else 0
    for n, (count, styles) in spec.items():
        for seed in (seeds or {}).get(n, (SEED,)):
            for i, p in enumerate(generate_puzzles(n, count, seed=seed)):
                sft = bool(every) and (i // len(styles)) % every == 0
                texts.append(base_text(p, styles[i % len(styles)], sft_prompt=sft, seed=seed))
    return texts


def bucketed_batches(lengths: list[int], batch_size: int, rng: random.Random) -> list[list[int]]:
    """One epoch of batches of similar length: sort by length with random tie-breaks, cut, shuffle the batches."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], rng.random()))
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    rng.shuffle(batches)
    return batches


def batch_loss(model: torch.nn.Module, examples: list) -> torch.Tensor:
    """Mean over texts of the mean token cross-entropy (the SFT loss with an empty prompt)."""
    ids, mask, owners = collate(examples)
    seq = sft_sequence_loss(model(input_ids=ids, use_cache=False).logits, ids, mask)
    return example_losses(seq, owners, len(examples)).mean()


@torch.no_grad()
def eval_loss(model: torch.nn.Module, examples: list, batch_size: int = 16) -> float:
    """Mean held-out loss (eval mode)."""
    model.eval()
    losses = [float(batch_loss(model, examples[i : i + batch_size])) * len(examples[i : i + batch_size])
              for i in range(0, len(examples), batch_size)]
    model.train()
    return sum(losses) / len(examples)


@torch.no_grad()
def base_accuracy(model: torch.nn.Module, tok, n_people: int, count: int, max_new_tokens: int = 700) -> float:  # type: ignore[no-untyped-def]
    """Greedy base-format accuracy on `count` fresh puzzles (seed never used by the corpus)."""
    from sample_effect.rollouts.generation import sample

    model.eval()
    puzzles = generate_puzzles(n_people, count, seed=SEED + 1)
    right = 0
    for p in puzzles:
        comp = sample(model, tok, base_prompt(p), n=1, max_new_tokens=max_new_tokens, temperature=0.0)[0]
        right += int(f"So the answer is: {p.answer}." in comp.text)
    return right / count


@torch.no_grad()
def sft_prompt_accuracy(model: torch.nn.Module, tok, n_people: int, count: int, max_new_tokens: int = 700) -> float:  # type: ignore[no-untyped-def]
    """Greedy accuracy from the SFT prompt, counted on the base answer line (the SFT answer format is not known yet)."""
    from sample_effect.rollouts.generation import sample

    model.eval()
    right = 0
    for p in generate_puzzles(n_people, count, seed=SEED + 1):
        comp = sample(model, tok, prompt_text(p, SEED + 1), n=1, max_new_tokens=max_new_tokens, temperature=0.0)[0]
        right += int(f"So the answer is: {p.answer}." in comp.text)
    return right / count


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    ap.add_argument("--out", default=None, help="output directory (default: the preset's asset folder)")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--continue-from", default=None, metavar="DIR",
                    help="start from this earlier build's weights and tokenizer (a second training stage with its own "
                         "warm-up and cosine schedule; its build_info.json is carried into the new one)")
    ap.add_argument("--lr", type=float, default=None, help="peak lr (default: the preset's)")
    ap.add_argument("--eval-count", type=int, default=24, help="fresh puzzles per size for the final greedy accuracy")
    args = ap.parse_args()
    spec = PRESETS[args.preset]
    steps = args.steps or spec["steps"]
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    texts = corpus(spec["corpus"], spec.get("sft_prompt_share", 0.0), spec.get("corpus_seeds"))
    # The tokenizer also sees the SFT format strings so \boxed{...} tokenises compactly.
    m = spec["model"]
    earlier = None
    if args.continue_from:
        from sample_effect.models.loading import load_model

        model, tok = load_model(args.continue_from, "float32")
        earlier = json.loads((Path(args.continue_from) / "build_info.json").read_text())
    else:
        tok = train_tokenizer(texts + [FORMAT_HINT] * 50, vocab_size=1024)
        model = build_tiny_model(m["arch"], tok, torch.float32, seed=0, hidden=m["hidden"], layers=m["layers"],
                                 heads=m["heads"], max_len=m["max_len"])
    lr = args.lr or spec["lr"]
    records = [(i + 1, {"id": f"c{i}", "prompt": "", "response": t}) for i, t in enumerate(texts)]
    data, report = tokenize_examples(examples_from_records(records), tok, max_length=spec["max_tokens"])
    kept = [ex for ex in data if len(ex.sequences[0]) < spec["max_tokens"]]  # whole texts only
    rng = random.Random(SEED)
    rng.shuffle(kept)
    held, train = kept[:96], kept[96:]
    if earlier is not None:  # the same held-out split, another batch order
        rng = random.Random(SEED + 1)
    lengths = [len(ex.sequences[0]) for ex in train]
    print(f"corpus {len(texts)} texts, {len(train)} train / {len(held)} held out "
          f"({len(data) - len(kept)} over {spec['max_tokens']} tokens dropped); "
          f"{sum(p.numel() for p in model.parameters()):,} parameters; prep {time.perf_counter() - t0:.0f}s", flush=True)

    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    warm = spec["warmup"]
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps))))
    eval_every = max(1, steps // 15)
    curve = {"step": [0], "eval_loss": [eval_loss(model, held)], "elapsed_s": [0.0]}
    batches: list[list[int]] = []
    model.train()
    t_train = time.perf_counter()
    for step in range(1, steps + 1):
        if not batches:
            batches = bucketed_batches(lengths, spec["batch_size"], rng)
        idx = batches.pop()
        loss = batch_loss(model, [train[i] for i in idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % eval_every == 0 or step == steps:
            el = time.perf_counter() - t_train
            curve["step"].append(step)
            curve["eval_loss"].append(eval_loss(model, held))
            curve["elapsed_s"].append(round(el, 1))
            print(f"step {step}/{steps}: train loss {loss.item():.4f}, eval loss {curve['eval_loss'][-1]:.4f}, "
                  f"{el:.0f}s ({el / step:.2f}s/step, evaluations included)", flush=True)
    train_seconds = time.perf_counter() - t_train
    model.eval()
    out = Path(args.out or spec["out"])
    save_model(model, tok, out)
    t_eval = time.perf_counter()
    accuracy = {str(n): base_accuracy(model, tok, n, args.eval_count) for n in spec["corpus"]}
    print(f"greedy base-format accuracy on fresh puzzles: {accuracy} ({time.perf_counter() - t_eval:.0f}s)", flush=True)
    from_sft_prompt = {str(n): sft_prompt_accuracy(model, tok, n, args.eval_count) for n in spec["corpus"]}
    print(f"greedy accuracy from the SFT prompt (base answer line): {from_sft_prompt}", flush=True)
    info = {
        "preset": args.preset, "config": m, "corpus_puzzles": {str(n): c for n, (c, _) in spec["corpus"].items()},
        "corpus_styles": {str(n): list(s) for n, (_, s) in spec["corpus"].items()},
        "corpus_seeds": {str(n): list(spec.get("corpus_seeds", {}).get(n, (SEED,))) for n in spec["corpus"]},
        "max_tokens": spec["max_tokens"], "seed": SEED, "steps": steps, "batch_size": spec["batch_size"],
        "lr": lr, "warmup_steps": warm, "schedule": "cosine", "torch_threads": torch.get_num_threads(),
        "params": sum(p.numel() for p in model.parameters()), "vocab": len(tok),
        "texts_dropped_over_max_tokens": len(data) - len(kept), "truncated": report.n_truncated,
        "train_seconds": round(train_seconds, 1), "build_seconds": round(time.perf_counter() - t0, 1),
        "eval_loss": curve["eval_loss"], "eval_steps": curve["step"], "eval_elapsed_s": curve["elapsed_s"],
        "base_format_greedy_accuracy": accuracy,
        "sft_prompt_greedy_accuracy": from_sft_prompt, "sft_prompt_share": spec.get("sft_prompt_share", 0.0),
        "accuracy_puzzles_per_size": args.eval_count,
        "torch": torch.__version__,
    }
    if earlier is not None:  # a second stage: keep the first stage's record, and the total
        info["continued_from"] = earlier
        info["total_steps"] = earlier.get("total_steps", earlier["steps"]) + steps
        info["total_train_seconds"] = round(earlier.get("total_train_seconds", earlier["train_seconds"]) + train_seconds, 1)
    (out / "build_info.json").write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps(info, indent=2))


if __name__ == "__main__":
    main()
