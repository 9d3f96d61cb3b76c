#!/usr/bin/env python
"""Q2g: which SFT start does GRPO improve fastest, under the powered protocol of `validate rl-starts`.

Builds six RL starts on `--model tiny` from one base and one set of puzzles, a reference GRPO run whose
theta_K - theta_0 is the fixed direction of the paper's protocol, and then runs `validate rl-starts` at
each lr (every predictor, the baselines, R real GRPO seeds per start). Every command goes through the CLI
(`python -m sample_effect ...`), each output is kept, and a rerun skips what exists, so a stopped run
resumes where it stopped.

    python scripts/rl_starts_study.py --out runs/q2g                 # everything (about 1.5-2 h on 2 cores)
    python scripts/rl_starts_study.py --out runs/q2g --stages starts # only the SFT starts and the reference run

The starts (all from `tiny`, AdamW lr 2e-4, batch 4, clip 1.0, constant lr, as the demo's RL starts):
answer-only, short-cot and long-cot (the same 160 puzzles, 240 steps); mix (80 answer-only and 80 short-cot
of those puzzles, 240 steps); answer-only-60 (answer-only, 60 steps: a shorter SFT); re-distilled (the same
160 puzzles answered by the reference run's final GRPO policy, 8 samples at temperature 0.7, one correct
completion kept per puzzle, 240 steps; arXiv 2505.17988's re-distillation).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from experiments import Runner, cat  # the same subprocess runner and timing records

STYLES = ("answer-only", "short-cot", "long-cot")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/q2g")
    p.add_argument("--stages", default="starts,reference,validate")
    p.add_argument("--python", default=sys.executable)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--start-examples", type=int, default=160)
    p.add_argument("--start-steps", type=int, default=240)
    p.add_argument("--rl-prompts", type=int, default=32, help="GRPO training puzzles (2-3 people)")
    p.add_argument("--eval-prompts", type=int, default=48, help="held-out puzzles of every measurement")
    p.add_argument("--reference-steps", type=int, default=25, help="GRPO steps of the reference run (the paper's 25)")
    p.add_argument("--lrs", default="2e-4,5e-5", help="GRPO lrs of validate rl-starts")
    p.add_argument("--runs", type=int, default=4, help="GRPO seeds per start and lr")
    p.add_argument("--steps", type=int, default=6, help="GRPO steps per run")
    p.add_argument("--eval-samples", type=int, default=8)
    p.add_argument("--tag", default="")
    p.add_argument("--overwrite", action="store_true")
    return p.parse_args(argv)


def kk(R: Runner, name: str, n: int, seed: int, style: str) -> str:
    """n puzzles, half 2-person and half 3-person, in OUT/data/NAME-STYLE.jsonl."""
    q = R.p("data")
    Path(q).mkdir(parents=True, exist_ok=True)
    parts = []
    for people, count in ((2, n // 2), (3, n - n // 2)):
        f = f"{q}/{name}-{style}-{people}p.jsonl"
        if not R.done(f):
            R.se("kk", "--people", people, "--n", count, "--seed", seed + people, "--style", style,
                 "--id-prefix", f"{name}-{style}", "--out", f, label="kk")
        parts.append(f)
    out = f"{q}/{name}-{style}.jsonl"
    cat(parts, out)
    return out


def sft(R: Runner, name: str, data: str, steps: int) -> str:
    """One RL start: the demo's recipe on `data` for `steps` steps; returns OUT/starts/NAME/final."""
    run = R.p("starts", name)
    Path(run).parent.mkdir(parents=True, exist_ok=True)
    if not R.done(f"{run}/final"):
        R.se("train-sft", "--model", "tiny", "--data", data, "--out", run, "--lr", 2e-4, "--batch-size", 4,
             "--steps", steps, "--max-grad-norm", 1.0, "--schedule", "constant", "--eval-every", 0,
             "--seed", R.args.seed, label=f"q2g train-sft {name}")
    return f"{run}/final"


def data(R: Runner) -> dict[str, str]:
    a = R.args
    files = {s: kk(R, "start", a.start_examples, 20_000 + 10 * a.seed, s) for s in STYLES}
    mix = R.p("data", "start-mix.jsonl")
    if not R.done(mix):
        ao, sc = (Path(files[s]).read_text().splitlines() for s in ("answer-only", "short-cot"))
        Path(mix).write_text("".join((x if i % 2 == 0 else y) + "\n" for i, (x, y) in enumerate(zip(ao, sc))))
    files["mix"] = mix
    files["rl"] = kk(R, "rl", a.rl_prompts, 21_000 + 10 * a.seed, "answer-only")
    files["eval"] = kk(R, "eval", a.eval_prompts, 22_000 + 10 * a.seed, "answer-only")
    return files


def stage_starts(R: Runner) -> dict[str, str]:
    a = R.args
    files = data(R)
    starts = {s: sft(R, s, files[s], a.start_steps) for s in STYLES}
    starts["mix"] = sft(R, "mix", files["mix"], a.start_steps)
    starts["answer-only-60"] = sft(R, "answer-only-60", files["answer-only"], 60)
    return starts


def stage_reference(R: Runner) -> dict[str, str]:
    """The reference GRPO run from the answer-only start; its policy re-distils the start puzzles for the sixth start."""
    a = R.args
    starts = stage_starts(R)
    files = data(R)
    ref = R.p("reference")
    if not R.done(f"{ref}/final"):
        R.se("reference-direction", "--model", starts["answer-only"], "--prompts", files["rl"], "--reward", "kk",
             "--out", ref, "--steps", a.reference_steps, "--prompts-per-step", 4, "--group-size", 8,
             "--max-new-tokens", 200, "--lr", 2e-4, "--max-grad-norm", 1.0, "--seed", a.seed,
             label="q2g reference GRPO run")
    red, stats = R.p("data", "start-redistilled.jsonl"), R.p("data", "start-redistilled.json")
    if not R.done(red, stats):
        R.se("redistill", "--model", f"{ref}/final", "--prompts", files["answer-only"], "--reward", "kk", "--out", red,
             "--stats", stats, "--samples-per-prompt", 8, "--keep-per-prompt", 1, "--temperature", 0.7,
             "--max-new-tokens", 200, "--seed", a.seed, label="q2g redistill")
    starts["re-distilled"] = sft(R, "re-distilled", red, a.start_steps)
    return starts


def stage_validate(R: Runner) -> None:
    a = R.args
    starts = stage_reference(R)
    files = data(R)
    models = [x for name, path in starts.items() for x in ("--model", f"{name}={path}")]
    for lr in a.lrs.split(","):
        out = R.p(f"lr{lr}")
        if not R.done(f"{out}/rl_starts.json"):
            R.se("validate", "rl-starts", *models, "--prompts", files["rl"], "--eval-prompts", files["eval"],
                 "--reward", "kk", "--runs", a.runs, "--steps", a.steps, "--lr", lr, "--max-grad-norm", 1.0,
                 "--prompts-per-step", 4, "--group-size", 8, "--max-new-tokens", 200, "--eval-samples", a.eval_samples,
                 "--target", "accuracy,direction,loss", "--direction", starts["answer-only"], R.p("reference", "final"),
                 "--accuracy-every", 2,
                 "--seed", a.seed, "--out", out, label=f"q2g validate rl-starts lr {lr}")
        print(Path(out, "rl_starts.md").read_text())


def stage_table(R: Runner) -> None:
    """The Q2g tables of docs/experiments.md from each lr's rl_starts.json: per measurement, predictors x lrs."""
    a = R.args
    docs = {lr: json.loads(Path(R.p(f"lr{lr}"), "rl_starts.json").read_text()) for lr in a.lrs.split(",")
            if Path(R.p(f"lr{lr}"), "rl_starts.json").exists()}
    if not docs:
        raise SystemExit("no rl_starts.json yet; run --stages validate first")
    first = next(iter(docs.values()))
    for m in first["measurements"]:
        print(f"\nMeasured: {m} growth per GRPO step. Spearman [95%]; agreeing / resolved pairs (ties)")
        print("| predictor | " + " | ".join(f"lr {lr}" for lr in docs) + " |")
        print("|---|" + "---|" * len(docs))
        for name in first["by_measurement"][m]:
            cells = []
            for doc in docs.values():
                v = doc["by_measurement"][m][name]
                rho = "n/a" if v["spearman"] != v["spearman"] else f"{v['spearman']:+.2f}"
                lo, hi = v["spearman_ci95"]
                cells.append(f"{rho} [{lo:+.2f}, {hi:+.2f}]; {v['pairs_agree']}/{v['pairs_resolved']}"
                             + (f" ({v['ties']} ties)" if v["ties"] else ""))
            print(f"| {name} | " + " | ".join(cells) + " |")
        print("resolved by the runs: " + ", ".join(
            f"lr {lr}: {next(iter(d['by_measurement'][m].values()))['pairs_measured_resolved']} of "
            f"{next(iter(d['by_measurement'][m].values()))['pairs']}" for lr, d in docs.items()))
    print("\nPer start (measured mean slope +- SE per measurement; lr: first):")
    for lr, doc in docs.items():
        print(f"lr {lr}: {doc['seconds']:.0f} s")
        for st in doc["starts"]:
            meas = "; ".join(f"{m} {v['mean']:+.4f} +- {v['se']:.4f}" for m, v in st["measured"].items())
            print(f"  {st['name']}: {meas}")


def main(argv=None):
    a = parse_args(argv)
    R = Runner(argparse.Namespace(**(vars(a) | {"stages": f"q2g-{a.stages}"})))
    stages = {"starts": stage_starts, "reference": stage_reference, "validate": stage_validate, "table": stage_table}
    for s in a.stages.split(","):
        print(f"=== stage {s}", flush=True)
        result = stages[s.strip()](R)
        if isinstance(result, dict):
            print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
