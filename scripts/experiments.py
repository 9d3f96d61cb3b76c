#!/usr/bin/env python
"""The paper's questions (arXiv 2505.17988) in miniature on Knights-and-Knaves with `--model tiny`.

Runs every command behind docs/experiments.md through the CLI (`python -m sample_effect ...` in a
subprocess), writes everything under --out (default runs/experiments), records each command's wall
time in OUT/timings-STAGES.json and gathers the small result tables into OUT/summary.json.

    python scripts/experiments.py --out runs/experiments            # all stages (~30-40 min on 2 CPU cores)
    python scripts/experiments.py --out runs/experiments --stages q1
    python scripts/experiments.py --out runs/experiments --stages q2,q3 --grpo-steps 4

Stages: data, q1 (SFT dataset effects vs real SFT), q2 (SFT inits -> predicted vs actual GRPO growth),
q2b (a stronger SFT start), q2c (kk-partial reward: predicted vs actual GRPO growth from three SFT starts),
q3 (re-distilled data vs template styles), q5 (Delta E >= (Delta r)^2 across the checkpoints of a GRPO run
that learns, and the token-position log-prob tail over its steps), sources (every imitation-data source side by side: template,
RFT, teacher distillation incl. SmolLM2-135M when the extra is installed, re-distilled; compare-sources + markers),
summary. Later stages read earlier stages' files; a stage
whose outputs exist is re-run only with --overwrite (commands get --overwrite too).
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

STYLES = ("answer-only", "short-cot", "long-cot")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/experiments", help="output directory")
    p.add_argument("--stages", default="data,q1,q2,q2b,q2c,q5,q3,sources,summary")
    p.add_argument("--python", default=sys.executable, help="interpreter that has sample_effect installed")
    p.add_argument("--seed", type=int, default=0, help="training / sampling seed passed to every command")
    p.add_argument("--data-seed", type=int, default=1, help="seed of the SFT puzzles (same puzzles in every style)")
    p.add_argument("--n-train", type=int, default=12, help="SFT puzzles per people-count (2 and 3 people)")
    p.add_argument("--n-target", type=int, default=10, help="held-out target puzzles per people-count")
    p.add_argument("--n-rl", type=int, default=16, help="2-person RL training prompts")
    p.add_argument("--n-rl-eval", type=int, default=12, help="2-person RL eval prompts")
    # Q1
    p.add_argument("--q1-lrs", default="3e-4,1e-5", help="lrs for validate curves (the first also for predict-sft)")
    p.add_argument("--q1-steps", type=int, default=24)
    p.add_argument("--batch-size", type=int, default=4)
    # Q2
    p.add_argument("--sft-steps", type=int, default=60)
    p.add_argument("--sft-lr", type=float, default=1e-3)
    p.add_argument("--grpo-steps", type=int, default=6)
    p.add_argument("--grpo-prompts-per-step", type=int, default=4)
    p.add_argument("--group-size", type=int, default=8)
    p.add_argument("--grpo-lr", type=float, default=1e-4)
    p.add_argument("--max-new-tokens", type=int, default=200, help="q2 rollout length")
    p.add_argument("--q2-grpo", action="store_true",
                   help="q2 also runs the accuracy-target predict-rl and GRPO from every SFT start (off by default: "
                        "with the default sizes no start solves a puzzle, so every group has zero variance)")
    # Q3
    p.add_argument("--n-strong", type=int, default=64, help="2-person answer-only puzzles for the stronger SFT")
    p.add_argument("--strong-steps", type=int, default=120)
    p.add_argument("--strong-lr", type=float, default=2e-3)
    p.add_argument("--redistill-samples", type=int, default=4, help="samples per prompt (temperature 0.7)")
    p.add_argument("--rank-lr", type=float, default=3e-4)
    # sources
    p.add_argument("--src-samples", type=int, default=32, help="sources: RFT samples per prompt")
    p.add_argument("--src-rft-rounds", type=int, default=3, help="sources: RFT rounds (each round-XX.jsonl is a source)")
    p.add_argument("--src-train-steps", type=int, default=24, help="sources: compare-sources --train-steps")
    p.add_argument("--src-lr", type=float, default=1e-5, help="sources: simulated and --train-steps lr")
    p.add_argument("--src-smollm2-prompts", type=int, default=24,
                   help="sources: the first N SFT puzzles for SmolLM2 (0 = skip it)")
    p.add_argument("--src-smollm2-tokens", type=int, default=128, help="sources: SmolLM2 max new tokens")
    p.add_argument("--q2c-prompts", type=int, default=64, help="q2c: 2-person RL prompts")
    p.add_argument("--q2c-seeds", type=int, default=4, help="q2c: predict-rl rollout seeds per start")
    p.add_argument("--q2c-runs", type=int, default=24, help="q2c: real first GRPO steps per start and lr")
    p.add_argument("--q2d-seeds", default="0,1,2", help="q2d: demo seeds (each: its own puzzles, SFT starts and GRPO)")
    p.add_argument("--q2d-starts", default="answer-only,short-cot,long-cot", help="q2d: SFT starts compared")
    p.add_argument("--q2d-redistill-samples", type=int, default=8,
                   help="q2d: samples per start puzzle for the re-distilled start from q5's policy (0 = no such start)")
    p.add_argument("--q2e-seed", type=int, default=0, help="q2e: the q2d seed whose SFT starts are examined")
    p.add_argument("--q2e-starts", default="answer-only,short-cot,long-cot,redistilled", help="q2e: starts examined")
    p.add_argument("--q2e-lr", type=float, default=None, help="q2e: GRPO lr (default: the q2d run's, 2e-4)")
    p.add_argument("--q2e-eval-samples", type=int, default=8, help="q2e: completions per held-out puzzle per evaluation")
    p.add_argument("--q2f-rollout-seeds", type=int, default=1,
                   help="q2f: independent rollout draws per start's prediction (the target fixed); 1 = the demo's only")
    p.add_argument("--q5-start-examples", type=int, default=160, help="q5: answer-only SFT puzzles of the RL start")
    p.add_argument("--q5-rl-prompts", type=int, default=64, help="q5: GRPO training puzzles (2-3 people)")
    p.add_argument("--q5-eval", type=int, default=96, help="q5: held-out puzzles for the greedy accuracy r")
    p.add_argument("--q5-samples", type=int, default=8, help="q5: samples per RL prompt each checkpoint re-distils")
    p.add_argument("--q5-steps", type=int, default=40, help="q5: GRPO steps (8 prompts each)")
    p.add_argument("--q5-save-every", type=int, default=10, help="q5: checkpoint (and eval) every N GRPO steps")
    p.add_argument("--q5-lr", type=float, default=2e-4, help="q5: SFT lr of the RL start (the demo's)")
    p.add_argument("--q5-grpo-lr", type=float, default=1e-4, help="q5: GRPO lr")
    p.add_argument("--threads", type=int, default=1, help="OMP/MKL threads per command (default 1)")
    p.add_argument("--tag", default="", help="suffix of this invocation's timings file, so that parallel runs of one "
                   "stage (e.g. q2d with different --q2d-seeds) keep separate files")
    p.add_argument("--overwrite", action="store_true")
    return p.parse_args(argv)


class Runner:
    def __init__(self, args):
        self.args = args
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        # one timings file per invocation's stage list, so stages may run in parallel processes
        self.tpath = self.out / f"timings-{args.stages.replace(',', '_')}{'-' + args.tag if args.tag else ''}.json"
        self.timings = json.loads(self.tpath.read_text()) if self.tpath.exists() else []

    def p(self, *parts) -> str:
        return str(self.out.joinpath(*parts))

    def se(self, *argv, label=None, check=True):
        """Run `python -m sample_effect ARGV`; record the wall time."""
        cmd = [self.args.python, "-m", "sample_effect", *map(str, argv), "--quiet"]
        if self.args.overwrite and argv[0] != "plot":
            cmd.append("--overwrite")
        elif argv[0] == "plot":
            cmd.append("--overwrite")
        shown = " ".join(cmd[2:])
        print(f"$ {shown}", flush=True)
        t0 = time.time()
        env = dict(os.environ, OMP_NUM_THREADS=str(self.args.threads), MKL_NUM_THREADS=str(self.args.threads))
        r = subprocess.run(cmd, text=True, capture_output=True, env=env)
        dt = time.time() - t0
        sys.stdout.write(r.stdout)
        sys.stderr.write(r.stderr[-3000:])
        self.timings.append({"label": label or argv[0], "cmd": shown, "seconds": round(dt, 1), "rc": r.returncode})
        self.tpath.write_text(json.dumps(self.timings, indent=1))
        print(f"  [{dt:.1f} s, rc {r.returncode}]", flush=True)
        if check and r.returncode != 0:
            raise SystemExit(f"command failed: {shown}")
        return r

    def done(self, *paths) -> bool:
        return not self.args.overwrite and all(Path(x).exists() for x in paths)


def cat(files, out):
    with open(out, "w") as f:
        for name in files:
            f.write(Path(name).read_text())


def stage_data(R: Runner):
    a = R.args
    d = R.p("data")
    os.makedirs(d, exist_ok=True)
    for style in STYLES:
        parts = []
        for people in (2, 3):
            f = f"{d}/{style}-{people}p.jsonl"
            if not R.done(f):
                R.se("kk", "--people", people, "--n", a.n_train, "--seed", a.data_seed, "--style", style,
                     "--id-prefix", style, "--out", f, label="kk")
            parts.append(f)
        cat(parts, f"{d}/train-{style}.jsonl")
    parts = []
    for people in (2, 3):
        f = f"{d}/target-{people}p.jsonl"
        if not R.done(f):
            R.se("kk", "--people", people, "--n", a.n_target, "--seed", a.data_seed + 1000, "--style", "answer-only",
                 "--id-prefix", "target", "--out", f, label="kk")
        parts.append(f)
    cat(parts, f"{d}/target.jsonl")
    for name, n, seed in (("rl", a.n_rl, a.data_seed + 2000), ("rl-eval", a.n_rl_eval, a.data_seed + 3000)):
        f = f"{d}/{name}.jsonl"
        if not R.done(f):
            R.se("kk", "--people", 2, "--n", n, "--seed", seed, "--style", "answer-only", "--id-prefix", name,
                 "--out", f, label="kk")


def sft_schedule(a, lr):
    return ["--lr", lr, "--batch-size", a.batch_size, "--steps", a.q1_steps, "--max-grad-norm", 1.0,
            "--schedule", "constant", "--seed", a.seed]


def data_flags(R, extra=()):
    flags = []
    for style in STYLES:
        flags += ["--data", f"{style}={R.p('data', f'train-{style}.jsonl')}"]
    for name, f in extra:
        flags += ["--data", f"{name}={f}"]
    return flags


def stage_q1(R: Runner):
    a = R.args
    q = R.p("q1")
    os.makedirs(q, exist_ok=True)
    lrs = [x.strip() for x in a.q1_lrs.split(",") if x.strip()]
    target = R.p("data", "target.jsonl")
    if not R.done(f"{q}/predict_lr{lrs[0]}.json"):
        R.se("predict-sft", "--model", "tiny", *data_flags(R), "--target-data", target, *sft_schedule(a, lrs[0]),
             "--out", f"{q}/predict_lr{lrs[0]}.json", label=f"q1 predict-sft lr {lrs[0]}")
    for lr in lrs:
        if not R.done(f"{q}/curves_lr{lr}.json"):
            R.se("validate", "curves", "--model", "tiny", *data_flags(R), "--target-data", target,
                 *sft_schedule(a, lr), "--eval-every", max(1, a.q1_steps // 8), "--out", f"{q}/curves_lr{lr}.json",
                 label=f"q1 validate curves lr {lr}")
        R.se("plot", "curves", f"{q}/curves_lr{lr}.csv", "--out", f"{q}/curves_lr{lr}.png", label="plot")
    R.se("plot", "predict-sft", f"{q}/predict_lr{lrs[0]}.csv", "--out", f"{q}/predict_lr{lrs[0]}.png", label="plot")


def stage_q2(R: Runner):
    a = R.args
    q = R.p("q2")
    os.makedirs(q, exist_ok=True)
    target = R.p("data", "target.jsonl")
    rl, rl_eval = R.p("data", "rl.jsonl"), R.p("data", "rl-eval.jsonl")
    starts = {"base": "tiny"}
    for style in STYLES:
        run = f"{q}/sft-{style}"
        if not R.done(f"{run}/final"):
            R.se("train-sft", "--model", "tiny", "--data", R.p("data", f"train-{style}.jsonl"), "--eval-data", rl_eval,
                 "--reward", "kk", "--out", run, "--lr", a.sft_lr, "--batch-size", a.batch_size, "--steps", a.sft_steps,
                 "--schedule", "cosine", "--warmup-steps", 5, "--eval-every", 0,
                 "--eval-max-new-tokens", 320, "--seed", a.seed, label=f"q2 train-sft {style}")
        starts[style] = f"{run}/final"
    models = []
    for m in starts.values():
        models += ["--model", m]
    rl_common = ["--prompts", rl, "--reward", "kk", "--group-size", a.group_size, "--max-new-tokens", a.max_new_tokens,
                 "--seed", a.seed]
    if not R.done(f"{q}/predict_rl.json"):
        R.se("predict-rl", *models, *rl_common, "--target-data", target, "--prompts-per-step",
             a.grpo_prompts_per_step, "--optimizer", "adamw", "--weight-decay", 0, "--clip", 1.0, "--lr", a.grpo_lr,
             "--out", f"{q}/predict_rl.json", "--ranking", f"{q}/predict_rl_prompts.csv",
             label="q2 predict-rl (loss target)")
    R.se("plot", "predict-rl", f"{q}/predict_rl.json", "--out", f"{q}/predict_rl.png", label="plot", check=False)
    if not a.q2_grpo:
        return
    if not R.done(f"{q}/predict_rl_acc.json"):
        R.se("predict-rl", *models, *rl_common, "--target-prompts", rl_eval, "--target-samples", 8,
             "--prompts-per-step", a.grpo_prompts_per_step, "--optimizer", "adamw", "--weight-decay", 0,
             "--clip", 1.0, "--lr", a.grpo_lr, "--out", f"{q}/predict_rl_acc.json",
             label="q2 predict-rl (accuracy target)", check=False)
    for name, m in starts.items():
        run = f"{q}/grpo-{name}"
        if not R.done(f"{run}/final"):
            R.se("train-grpo", "--model", m, "--prompts", rl, "--eval-prompts", rl_eval, "--reward", "kk",
                 "--out", run, "--steps", a.grpo_steps, "--prompts-per-step", a.grpo_prompts_per_step,
                 "--group-size", a.group_size, "--max-new-tokens", a.max_new_tokens, "--lr", a.grpo_lr,
                 "--eval-every", a.grpo_steps, "--eval-max-new-tokens", a.max_new_tokens, "--seed", a.seed,
                 label=f"q2 train-grpo {name}")
    if Path(f"{q}/predict_rl_acc.json").exists():
        R.se("plot", "predict-rl", f"{q}/predict_rl_acc.json", "--out", f"{q}/predict_rl_acc.png", label="plot")
    R.se("plot", "training", *[f"{q}/grpo-{n}" for n in starts], "--y", "reward_mean", "--out", f"{q}/grpo_reward.png",
         label="plot", check=False)
    R.se("plot", "quantiles", f"{q}/grpo-long-cot", "--bucket", 8, "--out", f"{q}/quantiles_long-cot.png",
         label="plot", check=False)


def strong_data(R: Runner) -> str:
    """The stronger recipe's SFT data: answer-only solutions of more 2-person puzzles (made once, in q2b/)."""
    a = R.args
    os.makedirs(R.p("q2b"), exist_ok=True)
    data = R.p("q2b", "train-answer-only-2p.jsonl")
    if not R.done(data):
        R.se("kk", "--people", 2, "--n", a.n_strong, "--seed", a.data_seed + 4000, "--style", "answer-only",
             "--id-prefix", "strong", "--out", data, label="kk")
    return data


def strong_sft(R: Runner, run: str, batch_size: int, warmup: int, label: str, *extra) -> str:
    """SFT of `tiny` on `strong_data` (cosine lr --strong-lr, --strong-steps steps) into `run`, unless it is done."""
    a = R.args
    if not R.done(f"{run}/final"):
        R.se("train-sft", "--model", "tiny", "--data", strong_data(R), "--eval-data", R.p("data", "rl-eval.jsonl"),
             "--reward", "kk", "--out", run, "--lr", a.strong_lr, "--batch-size", batch_size, "--steps", a.strong_steps,
             "--schedule", "cosine", "--warmup-steps", warmup, *extra, "--eval-max-new-tokens", 64, "--seed", a.seed,
             label=label)
    return run


def train_strong_sft(R: Runner) -> str:
    """q2b's stronger SFT start (answer-only SFT on more 2-person puzzles); trained once, shared by later stages."""
    return strong_sft(R, R.p("q2b", "sft-strong"), 8, 10, "q2b train-sft strong", "--eval-every", 0)


def stage_q2b(R: Runner):
    """A stronger starting point: the q2 SFT checkpoints solve no 2-person puzzle (0/16 informative
    groups), so train answer-only SFT on more 2-person puzzles, then predict-rl and a short GRPO from it."""
    a = R.args
    q = R.p("q2b")
    os.makedirs(q, exist_ok=True)
    rl, rl_eval, target = R.p("data", "rl.jsonl"), R.p("data", "rl-eval.jsonl"), R.p("data", "target.jsonl")
    run = train_strong_sft(R)
    if not R.done(f"{q}/predict_rl.json"):
        R.se("predict-rl", "--model", f"{R.p('q2', 'sft-answer-only')}/final", "--model", f"{run}/final",
             "--prompts", rl, "--reward", "kk", "--group-size", a.group_size, "--max-new-tokens", 64,
             "--seed", a.seed, "--target-data", target, "--prompts-per-step", a.grpo_prompts_per_step,
             "--optimizer", "adamw", "--weight-decay", 0, "--clip", 1.0, "--lr", a.grpo_lr,
             "--out", f"{q}/predict_rl.json", "--ranking", f"{q}/predict_rl_prompts.csv",
             label="q2b predict-rl")
    grpo = f"{q}/grpo-strong"
    if not R.done(f"{grpo}/final"):
        R.se("train-grpo", "--model", f"{run}/final", "--prompts", rl, "--eval-prompts", rl_eval, "--reward", "kk",
             "--out", grpo, "--steps", a.grpo_steps, "--prompts-per-step", a.grpo_prompts_per_step,
             "--group-size", a.group_size, "--max-new-tokens", 64, "--lr", a.grpo_lr, "--eval-every", a.grpo_steps,
             "--eval-max-new-tokens", 64, "--seed", a.seed, label="q2b train-grpo strong")
    R.se("plot", "predict-rl", f"{q}/predict_rl.json", "--out", f"{q}/predict_rl.png", label="plot", check=False)
    R.se("plot", "quantiles", grpo, "--bucket", 2, "--min-count", 3, "--out", f"{q}/quantiles.png", label="plot",
         check=False)


def stage_q2c(R: Runner):
    """RL growth predicted vs actual where GRPO has a signal: the shaped `kk-partial` reward (share of the people
    named correctly in the box) from three SFT starts of the stronger recipe (its checkpoints after 40, 80 and
    120 steps), on 64 two-person RL prompts. One-step checks (many real first steps per start, two lrs), 10-step
    curves, and the prediction's spread over rollout seeds."""
    a = R.args
    q = R.p("q2c")
    os.makedirs(q, exist_ok=True)
    rl = f"{q}/rl.jsonl"
    if not R.done(rl):
        R.se("kk", "--people", 2, "--n", a.q2c_prompts, "--seed", a.data_seed + 7000, "--style", "answer-only",
             "--id-prefix", "rl64", "--out", rl, label="kk")
    run = strong_sft(R, f"{q}/sft", 4, 5, "q2c train-sft (checkpoints every 40 steps)",
                     "--eval-every", 40, "--save-every", 40)
    starts = [f"{run}/checkpoint-40", f"{run}/checkpoint-80", f"{run}/final"]
    models = [x for m in starts for x in ("--model", m)]
    common = ["--prompts", rl, "--reward", "kk-partial", "--target-data", R.p("data", "target.jsonl"),
              "--group-size", a.group_size, "--max-new-tokens", 64]
    for seed in range(a.q2c_seeds):
        out = f"{q}/predict_seed{seed}.json"
        if not R.done(out):
            R.se("predict-rl", *models, *common, "--optimizer", "adamw", "--weight-decay", 0, "--clip", 1.0, "--lr", 1e-4,
                 "--prompts-per-step", 8, "--seed", 1000 + seed, "--out", out, label=f"q2c predict-rl seed {seed}")
    for lr in ("1e-4", "1e-5"):
        out = f"{q}/step1_lr{lr}.json"
        if not R.done(out):
            R.se("validate", "rl-curves", *models, *common, "--steps", 1, "--prompts-per-step", 8, "--lr", lr,
                 "--runs", a.q2c_runs, "--eval-every", 1, "--out", out, label=f"q2c one-step check lr {lr}")
    out = f"{q}/curves.json"
    if not R.done(out):
        R.se("validate", "rl-curves", *models, *common, "--steps", 10, "--prompts-per-step", 8, "--lr", "1e-4",
             "--runs", 3, "--eval-every", 2, "--out", out, label="q2c 10-step curves")


def stage_q2d(R: Runner):
    """The paper's RL ordering on the four-stage tiny base: per seed, the demo's RL part from each SFT start (160
    fresh puzzles of one style, 240 AdamW steps), `predict-rl` of held-out accuracy growth under the all-or-nothing
    `kk` reward, one real 8-step GRPO run, and the ordering verdict. The demo's selection part runs too.

    With --q2d-redistill-samples > 0 a fourth start joins: the same 160 start puzzles answered by stage q5's GRPO
    policy (an RL-trained model, the paper's re-distillation, arXiv 2505.17988): --q2d-redistill-samples samples per
    puzzle at temperature 0.7, one correct completion kept per puzzle, fine-tuned with the same recipe."""
    a = R.args
    for seed in (int(x) for x in a.q2d_seeds.split(",") if x.strip()):
        out = R.p("q2d", f"seed{seed}")
        extra = []
        if a.q2d_redistill_samples > 0:
            extra = ["--rl-start-data", f"redistilled={redistilled_start(R, seed)}"]
        if not R.done(f"{out}/rl_summary.json"):
            R.se("demo", "--out", out, "--seed", seed, "--rl-starts", a.q2d_starts, *extra, label=f"q2d demo seed {seed}")
    q2d_table(Path(R.p("q2d")))


def q2d_table(q: Path) -> None:
    """Every finished q2d seed as markdown rows (seed, start, SFT examples, step-0 accuracy, zero-variance share,
    predicted change [95%], actual change) and its ordering verdict; also q2d/summary.json."""
    rows, verdicts = [], {}
    for f in sorted(q.glob("seed*/rl_summary.json")):
        seed = f.parent.name.removeprefix("seed")
        doc = json.loads(f.read_text())
        for st in doc["starts"]:
            lo, hi = st["predicted_total_change_ci95"]
            rows.append(f"| {seed} | {st['name'].removeprefix('sft-')} | {st.get('sft_examples', '?')} | "
                        f"{st['start_accuracy']:.3f} | {st['predicted_zero_variance_fraction']:.0%} | "
                        f"{st['predicted_total_change']:+.3f} [{lo:+.3f}, {hi:+.3f}] | {st['actual_total_change']:+.3f} |")
        v = doc["verdict"]
        if v:
            verdicts[seed] = {"matched": v["matched"], "pairs_agreeing": v["pairs_agreeing"], "pairs": len(v["pairs"]),
                              "ties": v.get("ties", 0), "predicted_order": v["predicted_order"],
                              "actual_order": v["actual_order"]}
    (q / "summary.json").write_text(json.dumps({"rows": rows, "verdicts": verdicts}, indent=1) + "\n")
    print("| seed | start | SFT examples | accuracy at step 0 | zero-variance groups | predicted change [95%] | actual change |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    for seed, v in verdicts.items():
        print(f"seed {seed}: {v['pairs_agreeing']}/{v['pairs']} pairs agree ({v['ties']} ties); predicted "
              f"{' > '.join(v['predicted_order'])}; actual {' > '.join(v['actual_order'])}")


def redistilled_start(R: Runner, seed: int, n: int = 160) -> str:
    """q2d/data-seedS/redistilled.jsonl: stage q5's RL policy re-distils the demo's start puzzles of seed S.

    The puzzles are the ones `demo --seed S` fine-tunes its style starts on (`kk_demo.start_examples`: n puzzles,
    half 2-person and half 3-person, `kk_demo.start_puzzle_seed`), so the starts differ only in who wrote the
    responses.
    """
    from sample_effect.recipes.kk_demo import start_puzzle_seed

    a = R.args
    policy = R.p("q5", "grpo", "final")
    if not Path(policy).exists():
        raise SystemExit(f"q2d's re-distilled start needs stage q5's GRPO policy ({policy}); run --stages q5 first "
                         "or pass --q2d-redistill-samples 0")
    q = R.p("q2d", f"data-seed{seed}")
    os.makedirs(q, exist_ok=True)
    parts = []
    for people, count in ((2, n // 2), (3, n - n // 2)):
        f = f"{q}/start-{people}p.jsonl"
        if not R.done(f):
            R.se("kk", "--people", people, "--n", count, "--seed", start_puzzle_seed(seed), "--style", "answer-only",
                 "--id-prefix", "redistilled", "--out", f, label="kk")
        parts.append(f)
    cat(parts, f"{q}/start.jsonl")
    data, stats = f"{q}/redistilled.jsonl", f"{q}/redistilled.json"
    if not R.done(data, stats):
        R.se("redistill", "--model", policy, "--prompts", f"{q}/start.jsonl", "--reward", "kk", "--out", data,
             "--stats", stats, "--samples-per-prompt", a.q2d_redistill_samples, "--keep-per-prompt", 1,
             "--temperature", 0.7, "--max-new-tokens", 200, "--seed", seed, label=f"q2d redistill seed {seed}")
    return data


def demo_run(R: Runner, seed: int) -> tuple[list, list, object, dict]:
    """What q2d's demo run of `seed` used for RL: (training puzzles, held-out puzzles, its GRPOConfig, rl_summary.json),
    read from the files it wrote (rl_prompts.jsonl, rl_eval.jsonl, rl_summary.json's "grpo")."""
    from sample_effect.rollouts.prompts import load_rl_prompts
    from sample_effect.training.grpo import GRPOConfig

    src = Path(R.p("q2d", f"seed{seed}"))
    need = [src / f for f in ("rl_prompts.jsonl", "rl_eval.jsonl", "rl_summary.json")]
    if not all(f.exists() for f in need):
        raise SystemExit(f"needs q2d's finished demo run of seed {seed} ({', '.join(map(str, need))}); "
                         f"run --stages q2d --q2d-seeds {seed} first")
    doc = json.loads(need[2].read_text())
    return load_rl_prompts(need[0]), load_rl_prompts(need[1]), GRPOConfig.from_dict(doc["grpo"]).validate(), doc


def stage_q2e(R: Runner):
    """Why q2d's predicted RL changes overshoot: per start of q2d seed --q2e-seed, the demo's GRPO run again
    (same prompts, settings and seeds) with `grpo_step_decomposition`: every step's first-order change
    <theta_k - theta_{k-1}, G_0> against the measured held-out accuracy (--q2e-eval-samples per puzzle), and the
    accuracy along the first step's line theta_0 + t d_1. See sample_effect/validation/rl_steps.py."""
    import torch

    from sample_effect.engine.core import ComputeConfig
    from sample_effect.models.loading import load_model
    from sample_effect.plots.rl import step_decomposition_plot
    from sample_effect.validation.rl_accuracy import AccuracyCurveConfig
    from sample_effect.validation.rl_steps import grpo_step_decomposition

    a = R.args
    seed, q = a.q2e_seed, R.p("q2e")
    os.makedirs(q, exist_ok=True)
    src = Path(R.p("q2d", f"seed{seed}", "checkpoints"))
    starts = [d.name.removeprefix("start-") for d in sorted(src.glob("start-*")) if (d / "final").exists()]
    if not starts:
        raise SystemExit(f"stage q2e needs q2d's SFT starts under {src}; run --stages q2d --q2d-seeds {seed} first")
    prompts, held, cfg, _ = demo_run(R, seed)
    tag = f"seed{seed}"
    if a.q2e_lr is not None and a.q2e_lr != cfg.update.lr:
        cfg = dataclasses.replace(cfg, update=dataclasses.replace(cfg.update, lr=a.q2e_lr))
        tag = f"seed{seed}-lr{a.q2e_lr:g}"
    curve = AccuracyCurveConfig(eval_samples=a.q2e_eval_samples, target_samples=4, runs=1, noise_draws=64)
    torch.set_num_threads(a.threads)
    frames, summaries = [], []
    for name in [x for x in a.q2e_starts.split(",") if x in starts]:
        out = Path(q, f"{tag}-{name}.json")
        if R.done(out):
            doc = json.loads(out.read_text())
        else:
            t0 = time.time()
            df, summary = grpo_step_decomposition(f"sft-{name}", lambda d=src / f"start-{name}" / "final": load_model(d, "float32"),
                                                  prompts, held, "kk", cfg, curve, ComputeConfig(progress=False))
            summary["seconds"] = round(time.time() - t0, 1)
            doc = {"summary": summary, "rows": df.to_dict(orient="records")}
            out.write_text(json.dumps(doc, indent=1, default=float) + "\n")
        s = doc["summary"]
        summaries.append(s)
        frames.append(doc["rows"])
        line = ", ".join(f"t={p['t']:g}: {p['actual_change']:+.3f} (IS {p['is_change']:+.3f}, ess {p['ess']:.2f}) vs "
                         f"{p['first_order']:+.3f}" for p in s["line"])
        print(f"{s['name']}: predicted {s['predicted_total_change']:+.3f} (replayed {s['predicted_total_change_replay']:+.3f}; "
              f"on the trainer's first batch {s['first_batch_predicted']:+.4f}), steps' first order {s['path_first_order']:+.3f}, "
              f"measured {s['actual_total_change']:+.3f} (IS {s['actual_total_change_is']:+.3f}); first step {s['first_step_first_order']:+.4f} "
              f"(predicted {s['predicted_growth_per_step']:+.4f}); line {line}; |G0| rel. s.e. "
              f"{s['target_gradient_rel_stderr']:.2f}; {s.get('seconds', 0):.0f} s", flush=True)
    import pandas as pd

    rows = pd.DataFrame([r for f in frames for r in f])
    step_decomposition_plot(rows, f"{q}/steps-{tag}.png",
                            title=f"Where the RL prediction goes wrong (q2d seed {seed}, the demo's GRPO settings, lr {cfg.update.lr:g})")
    Path(q, f"summary-{tag}.json").write_text(json.dumps(summaries, indent=1) + "\n")


def rollout_seed_spread(R: Runner, src: Path, name: str, prompts, held, reward, cfg, curve, out: Path, rec: dict) -> dict:
    """The same start's prediction from --q2f-rollout-seeds independent rollout draws (predict seeds 1000, 1010, ...),
    the accuracy target fixed at the demo's draw: how much of the prediction is the luck of its rollouts."""
    from sample_effect.engine.core import ComputeConfig
    from sample_effect.models.loading import load_model, select_parameters
    from sample_effect.validation.rl_accuracy import accuracy_target, predict_accuracy_growth
    from sample_effect.validation.rl_curves import grpo_lrs

    want = R.args.q2f_rollout_seeds
    if len(rec.get("by_rollout_seed") or []) >= want:
        return rec
    model, tok = load_model(src / "checkpoints" / f"start-{name.removeprefix('sft-')}" / "final", "float32")
    g0 = accuracy_target(held, reward, tok, cfg, curve).resolve(model, select_parameters(model), [], ComputeConfig(progress=False))
    weight = sum(grpo_lrs(cfg)) / cfg.update.lr
    spread = []
    for k in range(want):
        full = predict_accuracy_growth(model, tok, prompts, held, reward, cfg,
                                       dataclasses.replace(curve, predict_seed=curve.predict_seed + 10 * k),
                                       ComputeConfig(progress=False), target=g0)
        spread.append({"predict_seed": curve.predict_seed + 10 * k, "extrapolated": full.growth_rate * weight,
                       "ci95": [x * weight for x in full.growth_rate_ci95], "replay": full.replay.total,
                       "zero_variance_fraction": full.zero_variance_fraction})
    rec = {**rec, "by_rollout_seed": spread}
    out.write_text(json.dumps(rec, indent=1) + "\n")
    return rec


def stage_q2f(R: Runner):
    """The replayed prediction on q2d's starts: per seed of --q2d-seeds and start, `predict_accuracy_growth` with the
    demo's settings (the same prediction as the demo's, plus `replay_path` over the whole 8-step schedule on the
    frozen gradients), set against the real GRPO run q2d made from that start."""
    import torch

    from sample_effect.engine.core import ComputeConfig
    from sample_effect.models.loading import load_model
    from sample_effect.validation.rl_accuracy import AccuracyCurveConfig, predict_accuracy_growth
    from sample_effect.validation.rl_curves import grpo_lrs
    from sample_effect.validation.rl_starts import ordering_verdict

    a = R.args
    q = R.p("q2f")
    os.makedirs(q, exist_ok=True)
    torch.set_num_threads(a.threads)
    curve = AccuracyCurveConfig(eval_samples=4, target_samples=4, runs=1, noise_draws=64)  # the demo's (`kk_demo.rl_stage`)
    from sample_effect.rollouts.rewards import get_reward

    reward = get_reward("kk")
    report = {}
    for seed in (int(x) for x in a.q2d_seeds.split(",") if x.strip()):
        src = Path(R.p("q2d", f"seed{seed}"))
        prompts, held, cfg, doc = demo_run(R, seed)
        starts = doc["starts"]
        rows = []
        for st in starts:
            out = Path(q, f"seed{seed}-{st['name']}.json")
            if R.done(out):
                rec = json.loads(out.read_text())
            else:
                t0 = time.time()
                model, tok = load_model(src / "checkpoints" / f"start-{st['name'].removeprefix('sft-')}" / "final", "float32")
                full = predict_accuracy_growth(model, tok, prompts, held, reward, cfg, curve, ComputeConfig(progress=False))
                weight = sum(grpo_lrs(cfg)) / cfg.update.lr
                rec = {"name": st["name"], "growth_rate": full.growth_rate, "extrapolated": full.growth_rate * weight,
                       "replay": full.replay.to_dict(), "seconds": round(time.time() - t0, 1)}
                out.write_text(json.dumps(rec, indent=1) + "\n")
            if a.q2f_rollout_seeds > 1:
                rec = rollout_seed_spread(R, src, st["name"], prompts, held, reward, cfg, curve, out, rec)
            rows.append({"name": st["name"], "actual_total_change": st["actual_total_change"],
                         "demo_predicted_total_change": st["predicted_total_change"], "extrapolated": rec["extrapolated"],
                         "replay": rec["replay"]["total"], "replay_runs_95": rec["replay"]["total_runs_95"],
                         "seconds": rec["seconds"], "by_rollout_seed": rec.get("by_rollout_seed")})
            r = rows[-1]
            print(f"seed {seed} {r['name']}: actual {r['actual_total_change']:+.3f}; first step x 8 {r['extrapolated']:+.3f} "
                  f"(demo {r['demo_predicted_total_change']:+.3f}); replay {r['replay']:+.3f} "
                  f"[{r['replay_runs_95'][0]:+.3f}, {r['replay_runs_95'][1]:+.3f}]; {r['seconds']:.0f} s", flush=True)
            if r["by_rollout_seed"]:
                print("   first step x 8 by rollout seed (target fixed): "
                      + ", ".join(f"{x['extrapolated']:+.3f} [{x['ci95'][0]:+.3f}, {x['ci95'][1]:+.3f}]"
                                  for x in r["by_rollout_seed"]), flush=True)
        if all(r["by_rollout_seed"] for r in rows):
            for r in rows:  # the mean over the independent rollout draws, and how often draw 0's interval holds the others
                draws = r["by_rollout_seed"]
                r["pooled"] = sum(x["extrapolated"] for x in draws) / len(draws)
                lo, hi = draws[0]["ci95"]
                r["others_in_first_ci"] = sum(lo <= x["extrapolated"] <= hi for x in draws[1:])
                r["sign_flips"] = len({x["extrapolated"] > 0 for x in draws}) > 1
        verdicts = {}
        for key in ("extrapolated", "replay", "pooled"):
            if key not in rows[0]:
                continue
            fake = [{"name": r["name"], "predicted_total_change": r[key], "actual_total_change": r["actual_total_change"],
                     "predicted_total_change_ci95": [r[key], r[key]]} for r in rows]
            v = ordering_verdict(fake) if len(fake) > 1 else None
            verdicts[key] = v and {"pairs_agreeing": v["pairs_agreeing"], "pairs": len(v["pairs"]), "ties": v["ties"]}
        report[seed] = {"rows": rows, "verdicts": verdicts}
        print(f"seed {seed}: pairs agreeing in sign: first step x 8 {verdicts['extrapolated']}, replay {verdicts['replay']}"
              + (f", mean of the rollout draws {verdicts['pooled']}; draw 0's interval holds "
                 f"{sum(r['others_in_first_ci'] for r in rows)} of {sum(len(r['by_rollout_seed']) - 1 for r in rows)} "
                 f"other draws; the sign flips across draws for {sum(r['sign_flips'] for r in rows)} of {len(rows)} starts"
                 if "pooled" in verdicts else ""))
    Path(q, f"summary-seeds{'_'.join(str(k) for k in report)}.json").write_text(json.dumps(report, indent=1) + "\n")


def kk_mixed(R: Runner, name: str, n: int, seed: int, style: str = "answer-only") -> str:
    """n puzzles, half 2-person and half 3-person (as the demo's), in q5/NAME.jsonl."""
    q = R.p("q5")
    parts = []
    for people, count in ((2, n // 2), (3, n - n // 2)):
        f = f"{q}/{name}-{people}p.jsonl"
        if count and not R.done(f):
            R.se("kk", "--people", people, "--n", count, "--seed", seed, "--style", style, "--id-prefix", name,
                 "--out", f, label="kk")
        if count:
            parts.append(f)
    cat(parts, f"{q}/{name}.jsonl")
    return f"{q}/{name}.jsonl"


def stage_q5(R: Runner):
    """The paper's growth law Delta E >= (Delta r)^2 across RL checkpoints, and where the rarest tokens sit.

    One GRPO run from the demo's answer-only RL start (160 puzzles, 120 AdamW steps at --q5-lr):
    --q5-steps steps of 8 prompts x --group-size rollouts under the `kk` reward on --q5-rl-prompts
    puzzles, a checkpoint and a greedy held-out eval (--q5-eval puzzles) every --q5-save-every.
    At every checkpoint c the policy re-distils the RL prompts (8 samples each at temperature 1,
    one correct completion kept per prompt): r(c) is the share of all samples the reward accepts,
    and the dataset effect E(c) is the mean sample effect of the kept set at the base model `tiny`
    (where re-distilled data is used, arXiv 2505.17988), toward Q1's held-out answer loss, for SGD
    and AdamW. The log-prob tail of the run: `plot quantiles` and its OUT_rare.csv.
    """
    a = R.args
    q = R.p("q5")
    os.makedirs(q, exist_ok=True)
    start = kk_mixed(R, "start", a.q5_start_examples, a.data_seed + 8000)
    rl = kk_mixed(R, "rl", a.q5_rl_prompts, a.data_seed + 8100)
    held = kk_mixed(R, "eval", a.q5_eval, a.data_seed + 8200)
    sft, grpo = f"{q}/sft", f"{q}/grpo"
    if not R.done(f"{sft}/final"):
        R.se("train-sft", "--model", "tiny", "--data", start, "--out", sft, "--lr", a.q5_lr, "--batch-size", 4,
             "--steps", 120, "--max-grad-norm", 1.0, "--schedule", "constant", "--eval-every", 0, "--seed", a.seed,
             label="q5 train-sft answer-only start")
    if not R.done(f"{grpo}/final"):
        R.se("train-grpo", "--model", f"{sft}/final", "--prompts", rl, "--eval-prompts", held, "--reward", "kk",
             "--out", grpo, "--steps", a.q5_steps, "--prompts-per-step", 8, "--group-size", a.group_size,
             "--max-new-tokens", 200, "--lr", a.q5_grpo_lr, "--max-grad-norm", 1.0, "--eval-every", a.q5_save_every,
             "--save-every", a.q5_save_every, "--eval-max-new-tokens", 200, "--seed", a.seed, label="q5 train-grpo")
    acc = {int(r["step"]): float(r["eval_accuracy"]) for r in read_csv(f"{grpo}/metrics.csv")
           if r.get("eval_accuracy") not in (None, "")}
    points = [(0, f"{sft}/final")] + [(s, f"{grpo}/checkpoint-{s}") for s in range(a.q5_save_every, a.q5_steps,
                                                                                 a.q5_save_every)]
    points.append((a.q5_steps, f"{grpo}/final"))
    rows, effects = [], {}
    for step, ck in points:
        data, stats = f"{q}/redistill-step{step}.jsonl", f"{q}/redistill-step{step}.json"
        if not R.done(data, stats):
            R.se("redistill", "--model", ck, "--prompts", rl, "--reward", "kk", "--out", data, "--stats", stats,
                 "--samples-per-prompt", a.q5_samples, "--keep-per-prompt", 1, "--temperature", 1.0,
                 "--max-new-tokens", 200, "--seed", a.seed, label=f"q5 redistill step {step}")
        st = json.loads(Path(stats).read_text())
        row = {"step": step, "reward": st["accept_rate"], "held_out_greedy_accuracy": acc.get(step), "kept": st["kept"],
               "samples": st["samples"]}
        for opt in ("sgd", "adamw"):
            out = f"{q}/rank-step{step}-{opt}.csv"
            if row["kept"] and not R.done(out):
                R.se("rank", "--model", "tiny", "--data", data, "--target-data", R.p("data", "target.jsonl"),
                     "--optimizer", opt, "--lr", a.rank_lr, "--max-grad-norm", 1.0, "--out", out,
                     *(["--weight-decay", 0.01] if opt == "adamw" else []),  # the recorded runs' (then default) decay
                     label=f"q5 rank step {step} {opt}")
            effects[(step, opt)] = [float(r["effect"]) for r in read_csv(out)] if Path(out).exists() else []
            e = effects[(step, opt)]
            row[f"effect_{opt}"] = sum(e) / len(e) if e else None
        rows.append(row)
    R.se("plot", "quantiles", grpo, "--bucket", 8, "--out", f"{q}/quantiles.png", label="plot", check=False)
    R.se("plot", "training", grpo, "--y", "reward_mean", "--out", f"{q}/reward.png", label="plot", check=False)
    law = growth_law(rows, effects, seed=a.seed)
    rare = read_csv(f"{q}/quantiles_rare.csv") if Path(f"{q}/quantiles_rare.csv").exists() else []
    Path(q, "summary.json").write_text(json.dumps({"checkpoints": rows, "growth_law": law, "rare_tokens": rare},
                                                  indent=1) + "\n")
    for r in law["rows"]:
        print(f"step {r['step']:>3}  r {r['reward']:.3f}  dr {r['delta_r']:+.3f}  (dr)^2 {r['delta_r_sq']:.4f}  "
              f"kept {r['kept']:>2}  dE/|E0| sgd {r['rel_delta_e_sgd']:+.4f} {r['rel_delta_e_sgd_ci95']}  "
              f"adamw {r['rel_delta_e_adamw']:+.4f} {r['rel_delta_e_adamw_ci95']}")


def growth_law(rows: list[dict], effects: dict, seed: int = 0, draws: int = 2000) -> dict:
    """Delta r and Delta E of every checkpoint against the first, with E as a share of |E(start)|.

    The share is unit-free, so it can sit next to (Delta r)^2, a squared probability; the paper's
    inequality is stated for its own normalisation, so only the sign and the growth with Delta r
    carry over, and the comparison with (Delta r)^2 is a reading, not a test of the constant. The
    95% interval of each Delta E resamples the examples of both kept sets (bootstrap, `draws`).
    """
    import numpy as np

    ok = [r for r in rows if r["effect_sgd"] is not None and r["effect_adamw"] is not None]
    if len(ok) < 2:
        return {"rows": [], "holds_sgd": None, "holds_adamw": None}
    rng = np.random.default_rng(seed)
    r0 = ok[0]
    out = []
    for r in ok[1:]:
        d = {"step": r["step"], "reward": r["reward"], "kept": r["kept"], "delta_r": r["reward"] - r0["reward"]}
        d["delta_r_sq"] = d["delta_r"] ** 2
        for opt in ("sgd", "adamw"):
            e0, e1 = np.asarray(effects[(r0["step"], opt)]), np.asarray(effects[(r["step"], opt)])
            scale = abs(float(e0.mean()))
            boot = [(rng.choice(e1, e1.size).mean() - rng.choice(e0, e0.size).mean()) / scale for _ in range(draws)]
            d[f"delta_e_{opt}"] = float(e1.mean() - e0.mean())
            d[f"rel_delta_e_{opt}"] = d[f"delta_e_{opt}"] / scale
            d[f"rel_delta_e_{opt}_ci95"] = [round(float(x), 4) for x in np.quantile(boot, [0.025, 0.975])]
        out.append(d)
    holds = {opt: sum(d[f"rel_delta_e_{opt}"] >= d["delta_r_sq"] for d in out) for opt in ("sgd", "adamw")}
    return {"rows": out, "start": r0, "holds_sgd": f"{holds['sgd']}/{len(out)}",
            "holds_adamw": f"{holds['adamw']}/{len(out)}"}


def stage_q3(R: Runner):
    a = R.args
    q = R.p("q3")
    os.makedirs(q, exist_ok=True)
    target = R.p("data", "target.jsonl")
    src = pick_redistill_source(R)
    print(f"re-distilling from {src}")
    Path(q, "redistill_source.txt").write_text(src + "\n")
    prompts = R.p("data", "train-long-cot.jsonl")  # the SFT puzzles, as the paper's re-distilled-A
    raw = f"{q}/redistilled-raw.jsonl"
    if not R.done(raw):
        R.se("redistill", "--model", src, "--prompts", prompts, "--reward", "kk", "--out", raw,
             "--samples-per-prompt", a.redistill_samples, "--keep-per-prompt", 1, "--temperature", 0.7,
             "--max-new-tokens", 320, "--seed", a.seed, label="q3 redistill", check=False)
    red = f"{q}/redistilled.jsonl"
    n = 0
    with open(red, "w") as f:
        for line in open(raw) if Path(raw).exists() else []:
            rec = json.loads(line)
            rec["id"] = "redistilled-" + rec["id"].removeprefix("long-cot-")
            f.write(json.dumps(rec) + "\n")
            n += 1
    print(f"re-distilled examples kept: {n}")
    pool = f"{q}/pool.jsonl"
    cat([R.p("data", f"train-{s}.jsonl") for s in STYLES] + ([red] if n else []), pool)
    if not R.done(f"{q}/rank.csv"):
        R.se("rank", "--model", "tiny", "--data", pool, "--target-data", target, "--optimizer", "adamw",
             "--lr", a.rank_lr, "--max-grad-norm", 1.0, "--weight-decay", 0.01, "--out", f"{q}/rank.csv",
             label="q3 rank")
    R.se("plot", "effects", f"{q}/rank.csv", "--group-by", "^(answer-only|short-cot|long-cot|redistilled)-",
         "--out", f"{q}/effects_by_source.png", label="plot")
    if n >= a.batch_size and not R.done(f"{q}/curves.json"):
        # the same puzzles in each source, restricted to those the re-distiller solved
        ids = {json.loads(x)["id"].removeprefix("redistilled-") for x in open(red)}
        extra = []
        for s in STYLES:
            f = f"{q}/sub-{s}.jsonl"
            with open(f, "w") as o:
                for x in open(R.p("data", f"train-{s}.jsonl")):
                    if json.loads(x)["id"].removeprefix(s + "-") in ids:
                        o.write(x)
            extra.append((s, f))
        extra.append(("redistilled", red))
        flags = []
        for name, f in extra:
            flags += ["--data", f"{name}={f}"]
        R.se("validate", "curves", "--model", "tiny", *flags, "--target-data", target,
             *sft_schedule(a, a.rank_lr), "--eval-every", max(1, a.q1_steps // 8), "--out", f"{q}/curves.json",
             label="q3 validate curves", check=False)
        if Path(f"{q}/curves.csv").exists():
            R.se("plot", "curves", f"{q}/curves.csv", "--out", f"{q}/curves.png", label="plot")


def count_lines(path) -> int:
    return sum(1 for x in open(path) if x.strip()) if Path(path).exists() else 0


def stage_sources(R: Runner):
    """Every imitation-data source on the same K&K prompts (the 24 SFT puzzles), one target, one yardstick.

    Sources: the generator's own solutions (template styles `tpl-*`), RFT rounds `rft-rN` from the stronger SFT
    checkpoint (its own correct samples), off-policy distillation from that checkpoint (`dist-tiny`, unfiltered,
    as arXiv 2505.21067), SmolLM2-135M-Instruct off-policy (`dist-smollm2`: unfiltered, the first
    --src-smollm2-prompts puzzles in its chat template; needs the smollm2 extra, and runs through a tiny student
    built by `init-tiny` with its tokenizer), and q3's re-distilled data when q3 has run. Then compare-sources (dataset effect toward the
    held-out answer loss, bootstrap CI, and the actual gain after --src-train-steps SFT steps from
    `tiny`) and markers.
    """
    a = R.args
    q = R.p("sources")
    os.makedirs(q, exist_ok=True)
    target, rl_eval = R.p("data", "target.jsonl"), R.p("data", "rl-eval.jsonl")
    prompts = R.p("data", "train-answer-only.jsonl")  # {id, prompt, answer}: the 24 SFT puzzles as RL prompts
    teacher = f"{train_strong_sft(R)}/final"
    # short names: they label the figures' axes
    sources = {f"tpl-{s.split('-')[0]}": R.p("data", f"train-{s}.jsonl") for s in STYLES}
    rft = f"{q}/rft"
    if not R.done(f"{rft}/summary.json"):
        R.se("rft", "--model", teacher, "--prompts", prompts, "--eval-prompts", rl_eval, "--reward", "kk", "--out", rft,
             "--rounds", a.src_rft_rounds, "--samples-per-prompt", a.src_samples, "--temperature", 1.0,
             "--max-new-tokens", 64, "--eval-max-new-tokens", 64, "--lr", 1e-3, "--steps", 8, "--batch-size", 4,
             "--seed", a.seed, label="sources rft")
    for r in range(a.src_rft_rounds):
        f = f"{rft}/round-{r:02d}.jsonl"
        if count_lines(f):
            sources[f"rft-r{r}"] = f
    dst = f"{q}/distill-strong"
    if not R.done(f"{dst}/teacher_data.jsonl"):
        R.se("distill", "--teacher", teacher, "--model", "tiny", "--prompts", prompts, "--reward", "kk", "--out", dst,
             "--no-filter", "--samples-per-prompt", 1, "--temperature", 1.0, "--max-new-tokens", 64, "--steps", 1,
             "--batch-size", 4, "--seed", a.seed, label="sources distill (strong tiny teacher)")
    sources["dist-tiny"] = f"{dst}/teacher_data.jsonl"
    if a.src_smollm2_prompts > 0:
        smol_prompts = f"{q}/smollm2-prompts.jsonl"
        with open(smol_prompts, "w") as o:
            o.writelines(list(open(prompts))[: a.src_smollm2_prompts])
        student, sd = f"{q}/smollm2-student", f"{q}/distill-smollm2"
        ok = R.done(f"{student}/config.json") or R.se(
            "init-tiny", "--tokenizer-from", "smollm2", "--out", student, "--seed", a.seed,
            label="sources init-tiny (SmolLM2 tokenizer)", check=False).returncode == 0
        if ok and not R.done(f"{sd}/teacher_data.jsonl"):
            ok = R.se("distill", "--teacher", "smollm2", "--model", student, "--prompts", smol_prompts, "--out", sd,
                      "--no-filter", "--chat-template", "--samples-per-prompt", 1, "--temperature", 1.0,
                      "--max-new-tokens", a.src_smollm2_tokens, "--steps", 2, "--batch-size", 4, "--seed", a.seed,
                      label="sources distill (SmolLM2-135M teacher)", check=False).returncode == 0
        if ok and count_lines(f"{sd}/teacher_data.jsonl"):
            # the teacher saw its chat format; as SFT data for `tiny` the prompt is the plain puzzle again
            plain = {json.loads(x)["id"]: json.loads(x)["prompt"] for x in open(prompts)}
            with open(f"{q}/distill-smollm2.jsonl", "w") as o:
                for x in open(f"{sd}/teacher_data.jsonl"):
                    rec = json.loads(x)
                    rec["prompt"] = plain[rec["id"].rsplit("-t", 1)[0]]
                    rec["id"] = "smollm2-" + rec["id"]  # unique across the sources (markers --effects)
                    o.write(json.dumps(rec, ensure_ascii=False) + "\n")
            sources["dist-smollm2"] = f"{q}/distill-smollm2.jsonl"
    red = R.p("q3", "redistilled.jsonl")
    if count_lines(red):
        sources["redistilled"] = red
    Path(q, "sources.json").write_text(json.dumps(source_info(sources), indent=1) + "\n")
    flags = [x for n, f in sources.items() for x in ("--source", f"{n}={f}")]
    if not R.done(f"{q}/compare.csv"):
        R.se("compare-sources", "--model", "tiny", *flags, "--target-data", target, "--optimizer", "adamw",
             "--lr", a.src_lr, "--max-grad-norm", 1.0, "--train-steps", a.src_train_steps, "--batch-size", a.batch_size,
             "--seed", a.seed, "--out", f"{q}/compare.csv", label="sources compare-sources")
    if not R.done(f"{q}/markers.csv"):
        R.se("markers", *sources.values(), "--model", "tiny", "--effects", "--target-data", target, "--lr", a.src_lr,
             "--max-grad-norm", 1.0, "--out", f"{q}/markers.csv", label="sources markers")
    rows = read_csv(f"{q}/compare.csv")
    eff, gain = [float(r["effect_mean"]) for r in rows], [float(r["actual_gain"]) for r in rows]
    info = {"spearman_effect_vs_actual_gain": spearman(eff, gain), "n_sources": len(rows),
            "sources": source_info(sources), "rft": json.loads(Path(rft, "summary.json").read_text())}
    Path(q, "summary.json").write_text(json.dumps(info, indent=1) + "\n")
    for r in rows:
        ci = f"[{float(r['ci_low']):.0f}, {float(r['ci_high']):.0f}]" if r["ci_low"] else "[n < 2]"
        print(f"{r['source']:>20} n={r['n']:>3} effect {float(r['effect_mean']):7.0f} {ci:>14}  "
              f"actual gain {float(r['actual_gain']):.3f}")
    print(f"Spearman(dataset effect, actual gain) over {len(rows)} sources: {info['spearman_effect_vs_actual_gain']:.3f}")
    plot_effect_vs_gain(rows, a.src_lr, a.src_train_steps, f"{q}/effect_vs_gain.png")


def source_info(sources):
    """n, correct answers (kk reward) and mean response length in characters per source file."""
    from sample_effect.rollouts.rewards import kk_reward

    out = {}
    for name, f in sources.items():
        recs = [json.loads(x) for x in open(f) if x.strip()]
        ok = [kk_reward(r["prompt"], r["response"], r["answer"], finished=r.get("finished", True)) for r in recs]
        out[name] = {"file": f, "n": len(recs), "correct": int(sum(ok)),
                     "mean_response_chars": round(sum(len(r["response"]) for r in recs) / max(1, len(recs)), 1)}
    return out


def spearman(x, y):
    def ranks(v):
        order = sorted(range(len(v)), key=lambda i: v[i])
        r = [0.0] * len(v)
        i = 0
        while i < len(v):  # average ranks over ties
            j = i
            while j + 1 < len(v) and v[order[j + 1]] == v[order[i]]:
                j += 1
            for k in range(i, j + 1):
                r[order[k]] = (i + j) / 2
            i = j + 1
        return r

    rx, ry = ranks(x), ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    sx = sum((a - mx) ** 2 for a in rx) ** 0.5
    sy = sum((b - my) ** 2 for b in ry) ** 0.5
    return cov / (sx * sy) if sx and sy else float("nan")


def plot_effect_vs_gain(rows, lr, steps, out):
    """Dataset effect (with its bootstrap CI) against the actual target-loss drop after `steps` SFT steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.2, 4.4), dpi=100)
    top = max(float(q["effect_mean"]) for q in rows)
    crowded = sorted((i for i, q in enumerate(rows) if float(q["effect_mean"]) > 0.6 * top),
                     key=lambda i: -float(rows[i]["actual_gain"]))
    side = {i: k % 2 == 1 for k, i in enumerate(crowded)}  # labels left/right in turn near the right edge
    for i, r in enumerate(rows):
        x, y = float(r["effect_mean"]), float(r["actual_gain"])
        lo = float(r["ci_low"]) if r["ci_low"] else x
        hi = float(r["ci_high"]) if r["ci_high"] else x
        ax.errorbar([x], [y], xerr=[[x - lo], [hi - x]], fmt="o", capsize=3)
        flip = side.get(i, False)
        ax.annotate(f"{r['source']} (n={r['n']})", (x, y), textcoords="offset points", fontsize=8,
                    xytext=(-8 if flip else 8, 5), ha="right" if flip else "left")
    ax.set_xlabel("dataset effect toward held-out answer loss (AdamW, clip 1.0; 95% bootstrap CI)")
    ax.set_ylabel(f"actual target-loss drop after {steps} SFT steps (lr {lr:g})")
    ax.set_title("Imitation sources on K&K (tiny model)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def final_acc(run):
    rows = read_csv(Path(run) / "metrics.csv")
    accs = [r.get("eval_accuracy") for r in rows if r.get("eval_accuracy") not in (None, "")]
    return float(accs[-1]) if accs else None


def pick_redistill_source(R: Runner):
    """The checkpoint with the best eval accuracy among the GRPO runs of q5, q2b and q2 (then their SFT runs)."""
    best, best_acc = None, -1.0
    runs = [Path(R.p("q5"), "grpo")] + [Path(R.p("q2b"), f"{k}-strong") for k in ("grpo", "sft")] + \
        [Path(R.p("q2"), f"{k}-{n}") for k in ("grpo", "sft") for n in ("long-cot", "short-cot", "answer-only")]
    for run in runs:
        if (run / "final").exists() and (run / "metrics.csv").exists():
            acc = final_acc(run)
            if acc is not None and acc > best_acc:
                best, best_acc = str(run / "final"), acc
    if best is None:
        raise SystemExit("stage q3 needs the q5, q2b or q2 runs (SFT/GRPO checkpoints)")
    return best


def q2c_summary(q: Path) -> dict:
    """Per start: predicted growth over rollout seeds (first order and with the second-order term), the one-step
    checks (mean real first step +- its standard error vs the prediction) and the 10-step curves."""
    import statistics as st

    def short(m):
        return Path(m).name  # checkpoint-40, checkpoint-80, final

    out: dict = {"predict": {}, "step1": {}, "curves": {}}
    for f in sorted(q.glob("predict_seed*.json")):
        for r in json.loads(f.read_text()):
            d = out["predict"].setdefault(short(r["model"]), {"growth": [], "growth_second_order": [], "zero_variance": [],
                                                               "ci95": []})
            d["growth"].append(r["growth_rate"])
            d["growth_second_order"].append(r["growth_rate_second_order"])
            d["zero_variance"].append(f"{r['zero_variance_groups']}/{r['n_prompts']}")
            d["ci95"].append(r["growth_rate_ci95"])
    for d in out["predict"].values():
        for k in ("growth", "growth_second_order"):
            d[k + "_mean"] = st.mean(d[k])
            d[k + "_sd"] = st.stdev(d[k]) if len(d[k]) > 1 else None
    for f in sorted(q.glob("step1_lr*.json")):
        lr = f.stem.split("_lr")[1]
        for m in json.loads(f.read_text())["models"]:
            out["step1"].setdefault(lr, {})[short(m["name"])] = {
                "actual": m["actual_total_change"], "actual_se": m["actual_total_change_se"], "runs": m["runs"],
                "predicted": m["predicted_growth_per_step"], "predicted_ci95": m["predicted_growth_ci95"],
                "predicted_second_order": m["predicted_growth_second_order"]}
    if (q / "curves.json").exists():
        doc = json.loads((q / "curves.json").read_text())
        out["curves"] = {short(m["name"]): {k: m[k] for k in ("predicted_total_change", "predicted_total_change_second_order",
                                                              "actual_total_change", "actual_total_change_se",
                                                              "predicted_growth_per_step", "actual_growth_per_step")}
                         for m in doc["models"]}
        out["curves"]["agreement"] = doc["agreement"]
    return out


def stage_summary(R: Runner):
    q2 = Path(R.p("q2"))
    out = {}
    grpo = {}
    for run in sorted(q2.glob("grpo-*")):
        rows = read_csv(run / "metrics.csv")
        grpo[run.name] = rows
    out["grpo_metrics"] = grpo
    sft = {}
    for run in sorted(q2.glob("sft-*")):
        sft[run.name] = read_csv(run / "metrics.csv")
    out["sft_metrics"] = sft
    rank = Path(R.p("q3", "rank.csv"))
    if rank.exists():
        by = {}
        for r in read_csv(rank):
            src = r["id"].split("-2p-")[0].split("-3p-")[0]
            by.setdefault(src, []).append(float(r["effect"]))
        out["q3_effect_by_source"] = {k: {"n": len(v), "mean": sum(v) / len(v), "min": min(v), "max": max(v)}
                                      for k, v in by.items()}
    if Path(R.p("q2c", "predict_seed0.json")).exists():
        out["q2c"] = q2c_summary(Path(R.p("q2c")))
    if Path(R.p("sources", "compare.csv")).exists():
        out["sources"] = read_csv(R.p("sources", "compare.csv"))
    out["timings"] = [t for f in sorted(R.out.glob("timings*.json")) for t in json.loads(f.read_text())]
    Path(R.p("summary.json")).write_text(json.dumps(out, indent=1))
    print(json.dumps({k: v for k, v in out.items() if k.startswith("q3") or k == "sources"}, indent=1))


def main(argv=None):
    a = parse_args(argv)
    R = Runner(a)
    stages = {"data": stage_data, "q1": stage_q1, "q2": stage_q2, "q2b": stage_q2b, "q2c": stage_q2c, "q2d": stage_q2d, "q2e": stage_q2e, "q2f": stage_q2f, "q3": stage_q3, "q5": stage_q5,
              "sources": stage_sources,
              "summary": stage_summary}
    t0 = time.time()
    for s in a.stages.split(","):
        s = s.strip()
        if s not in stages:
            raise SystemExit(f"unknown stage {s!r}; choose from {', '.join(stages)}")
        print(f"=== stage {s}", flush=True)
        stages[s](R)
    print(f"done in {time.time() - t0:.0f} s; wrote {R.out.resolve()} (timings-*.json, summary.json and one directory per stage)")


if __name__ == "__main__":
    main()
