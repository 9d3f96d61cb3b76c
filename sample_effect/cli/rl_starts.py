"""`sample-effect validate rl-starts` and `sample-effect reference-direction`: which SFT start GRPO improves fastest.

`reference-direction` makes the paper's fixed direction (a short GRPO run from a reference start;
theta_K - theta_0); `validate rl-starts` predicts every start with every predictor (sample-effect
under each target, a look-ahead, cheap baselines), runs R real GRPO seeds per start and judges each
predictor with error bars on both sides (`validation.rl_protocol`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

from sample_effect.cli.options import (
    SubParsers,
    add_chat_template_arg,
    add_common_args,
    add_device_arg,
    add_grpo_schedule_args,
    add_measurement_arg,
    add_target_args,
    grpo_config_from_args,
    load_model_from_args,
)
from sample_effect.errors import SampleEffectError


def add_parsers(sub: SubParsers) -> None:
    """Register `reference-direction`."""
    p = sub.add_parser(
        "reference-direction", help="the fixed direction of the RL-start protocol: a short GRPO run, theta_K - theta_0",
        description="Run GRPO for --steps steps (default 25, as the paper) from a reference start and keep both ends: "
        "OUT/start (theta_0), OUT/final (theta_K) and OUT/direction.json. `validate rl-starts --reference-run OUT` and "
        "`predict-rl --direction OUT/start OUT/final` then measure and predict every start's growth along that one "
        "direction, so no start is judged by its own noisy gradient.",
    )
    p.add_argument("--model", required=True, help="the reference start (checkpoint dir or built-in name)")
    p.add_argument("--prompts", required=True, help='RL JSONL: {"id", "prompt", "answer"}')
    add_chat_template_arg(p)
    p.add_argument("--reward", default="kk", help="kk, kk-partial, exact, boxed or module:function (default kk)")
    add_grpo_schedule_args(p)
    p.set_defaults(steps=25)
    p.add_argument("--seed", type=int, default=0, help="trainer seed (default 0)")
    p.add_argument("--dtype", default="float32", help="float32 (default), float64 or bfloat16")
    add_device_arg(p)
    p.add_argument("--out", required=True, help="output directory (start/, final/, direction.json)")
    add_common_args(p)
    p.set_defaults(func=cmd_reference_direction, eval_every=0)


def add_validate_parsers(checks: SubParsers) -> None:
    """Register `validate rl-starts`."""
    p = checks.add_parser(
        "rl-starts", help="which SFT start GRPO improves fastest: every predictor against R real GRPO runs per start",
        description="For every --model (a start): predict its GRPO growth with sample-effect (accuracy, direction and "
        "loss targets, with intervals that include the held-out prompts' noise), a look-ahead along the predicted first "
        "step, and baselines (greedy / sampled accuracy, pass@k, mixed-outcome share, learnability, held-out loss); then "
        "run --runs real GRPO seeds of --steps steps and fit one slope per run. Writes OUT/rl_starts.json (per "
        "predictor: spearman, spearman_ci95, pairs_resolved, pairs_agree, ties), OUT/rl_starts.md (the verdict), "
        "OUT/rl_starts_<measurement>.png and OUT/rl_starts_runs.csv. Predictions and finished runs are cached in "
        "OUT/cache: rerun the same command to resume.",
    )
    p.add_argument("--model", action="append", required=True, metavar="[NAME=]DIR",
                   help="a start (checkpoint dir or built-in name), optionally named; repeat, at least twice")
    p.add_argument("--prompts", required=True, help='GRPO training prompts, RL JSONL: {"id", "prompt", "answer"}')
    add_chat_template_arg(p)
    p.add_argument("--eval-prompts", required=True, help="held-out RL prompts of the accuracy measurement and target")
    p.add_argument("--reward", default="kk", help="kk, kk-partial, exact, boxed or module:function (default kk)")
    add_measurement_arg(p)
    add_target_args(p, ("data", "direction"), required=False, exclusive=False, normalize=False, helps={
        "data": "held-out correct solutions (SFT JSONL) of the loss target and measurement (default: --eval-prompts, "
                "when its lines have a response)",
        "direction": "the fixed direction d = FINAL - BASE of the direction target and measurement"})
    p.add_argument("--reference-run", metavar="DIR", help="d from `reference-direction --out DIR` (DIR/start, DIR/final); "
                   "instead of --direction")
    add_grpo_schedule_args(p)
    p.set_defaults(steps=6)
    p.add_argument("--runs", type=int, default=4, help="real GRPO runs per start, seeds --seed, --seed+1, ... (default 4)")
    p.add_argument("--seed", type=int, default=0, help="first trainer seed (default 0)")
    p.add_argument("--eval-samples", type=int, default=8, help="completions per held-out prompt at each accuracy "
                   "measurement; common random numbers at every step and start (default 8)")
    p.add_argument("--accuracy-every", type=int, default=2, help="measure accuracy every k steps and at the last "
                   "(direction and loss: every step) (default 2)")
    p.add_argument("--eval-seed", type=int, default=5000, help="seed of the accuracy measurement (default 5000)")
    p.add_argument("--target-samples", type=int, default=8, help="completions per held-out prompt for the accuracy "
                   "target, the look-ahead and the baselines (default 8)")
    p.add_argument("--predict-seed", type=int, default=1000, help="rollout seed of the predictions (default 1000)")
    p.add_argument("--lookahead", default=None, help="look-ahead points t (multiples of the predicted step), "
                   "comma-separated (default: the steps where accuracy is measured)")
    p.add_argument("--noise-draws", type=int, default=64, help="batch draws of the batch term (default 64)")
    p.add_argument("--bootstrap", type=int, default=2000, help="bootstrap draws of the Spearman interval (default 2000)")
    p.add_argument("--dtype", default="float32", help="float32 (default), float64 or bfloat16")
    add_device_arg(p)
    p.add_argument("--max-length", type=int, default=None, help="truncate held-out solutions to this many tokens")
    p.add_argument("--out", required=True, help="output directory")
    add_common_args(p)
    p.set_defaults(func=cmd_validate_rl_starts, eval_every=0)


def _starts(specs: list[str]) -> dict[str, str]:
    """NAME=DIR or DIR -> {name: spec}; names must differ."""
    out: dict[str, str] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        name, path = (name, path) if sep else (Path(spec.rstrip("/")).name if spec.rstrip("/") else spec, spec)
        if name == "final":  # .../start-x/final: name it by its run directory
            name = Path(path.rstrip("/")).parent.name or path
        if name in out:
            raise SampleEffectError(f"two starts are named '{name}'; name them: --model NAME=DIR")
        out[name] = path
    return out


def cmd_validate_rl_starts(args: argparse.Namespace) -> None:
    """Check everything, then predict, run and judge; write the outputs."""
    from sample_effect.models.loading import load_model, select_parameters
    from sample_effect.models.registry import resolve_model
    from sample_effect.rollouts.prompts import chat_template_prompts, load_rl_prompts
    from sample_effect.rollouts.rewards import get_reward
    from sample_effect.targets.core import direction_vector
    from sample_effect.validation.rl_measure import MEASUREMENTS
    from sample_effect.validation.rl_predictors import PredictSettings
    from sample_effect.validation.rl_protocol import (
        RLStartsConfig,
        compare_starts,
        probe_for,
        write_outputs,
    )

    measurements = tuple(m.strip() for m in args.target.split(",") if m.strip())
    bad = [m for m in measurements if m not in MEASUREMENTS]
    if bad or not measurements:
        raise SampleEffectError(f"--target: unknown measurement {bad or args.target!r}; choose from {', '.join(MEASUREMENTS)}")
    for flag, value in (("--runs", args.runs), ("--eval-samples", args.eval_samples), ("--target-samples", args.target_samples),
                        ("--accuracy-every", args.accuracy_every), ("--noise-draws", args.noise_draws)):
        if value < 1:
            raise SampleEffectError(f"{flag} must be >= 1, got {value}")
    if args.runs < 2:
        raise SampleEffectError("--runs must be >= 2: a measured growth rate needs an error bar")
    starts = _starts(args.model)
    if len(starts) < 2:
        raise SampleEffectError("validate rl-starts compares starts: give --model at least twice")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise SampleEffectError(f"--out must be a directory, but {out} is a file")
    if (out / "rl_starts.json").exists() and not args.overwrite:
        raise SampleEffectError(f"{out / 'rl_starts.json'} exists; pass --overwrite to replace it (the cache is reused)")
    if args.reference_run and args.direction:
        raise SampleEffectError("give --direction or --reference-run, not both")
    if args.reference_run:
        ref = Path(args.reference_run)
        base, final = ref / "start", ref / "final"
        for p in (base, final):
            if not p.is_dir():
                raise SampleEffectError(f"--reference-run {ref} has no {p.name}/ (make it with `sample-effect reference-direction`)")
        direction = (str(base), str(final))
    else:
        direction = tuple(args.direction) if args.direction else None
    if "direction" in measurements and direction is None:
        raise SampleEffectError("--target direction needs --direction BASE FINAL or --reference-run DIR")
    cfg = grpo_config_from_args(args)
    reward = get_reward(args.reward)
    prompts, held = load_rl_prompts(args.prompts), load_rl_prompts(args.eval_prompts)
    if not prompts or not held:
        raise SampleEffectError("--prompts and --eval-prompts must hold prompts")
    paths = {name: str(resolve_model(spec)) for name, spec in starts.items()}
    first_model, tok = load_model(next(iter(paths.values())), args.dtype, device=args.device)
    prompts, held = (chat_template_prompts(x, tok, args.chat_template) for x in (prompts, held))
    loss_examples = held_out_solutions(args.target_data, args.eval_prompts, held, tok, args.max_length)
    if loss_examples is None and "loss" in measurements:
        raise SampleEffectError("--target loss needs correct solutions: --target-data FILE, or --eval-prompts with a "
                                "response field")
    d = None
    if direction is not None:
        d = direction_vector(direction[0], direction[1], select_parameters(first_model))
    del first_model
    every = args.accuracy_every
    points = sorted({*range(every, cfg.steps + 1, every), cfg.steps})
    look = tuple(int(x) for x in args.lookahead.split(",")) if args.lookahead else tuple(points)
    probe = probe_for(measurements, held, reward, cfg, eval_samples=args.eval_samples, eval_seed=args.eval_seed,
                      accuracy_every=every, direction=d, loss_examples=loss_examples)
    config = RLStartsConfig(runs=args.runs, n_boot=args.bootstrap, dtype=args.dtype, predict=PredictSettings(
        seed=args.predict_seed, target_samples=args.target_samples, noise_draws=args.noise_draws, lookahead=look))
    loaders = {n: (p, (lambda p=p: load_model(p, args.dtype, device=args.device))) for n, p in paths.items()}
    say = None if args.quiet else (lambda m: print(f"rl-starts: {m}", flush=True))
    out.mkdir(exist_ok=True)
    doc, rows = compare_starts(loaders, prompts, cfg, probe, config, out, say=say)
    doc["config"]["direction"] = list(direction) if direction else None
    files = write_outputs(doc, rows, out)
    print((out / "rl_starts.md").read_text())
    print(f"{doc['seconds']:.0f} s; wrote {', '.join(str(f) for f in files)}")


def held_out_solutions(target_data: str | None, eval_prompts: str, held: list, tok: Any,
                       max_length: int | None) -> list | None:
    """The loss measurement's examples: --target-data, else the eval prompts' responses after the prompt exactly as
    the policy is sampled on it (`held`, chat-templated when --chat-template says so); None when there are none."""
    from sample_effect.data.examples import load_examples, tokenize_examples

    raw = load_examples(target_data) if target_data else _responses(eval_prompts)
    if raw and not target_data:
        templated = {p.id: p.prompt for p in held}
        raw = [dataclasses.replace(ex, prompt=templated.get(ex.id, ex.prompt)) for ex in raw]
    return tokenize_examples(raw, tok, max_length)[0] if raw else None


def _responses(path: str) -> list | None:
    """The eval prompts as SFT examples when every line has a response (the correct solution), else None."""
    from sample_effect.data.examples import load_examples

    with open(path, encoding="utf-8") as f:
        lines = [json.loads(x) for x in f if x.strip()]
    if not lines or not all(isinstance(x, dict) and x.get("response") for x in lines):
        return None
    return load_examples(path)


def cmd_reference_direction(args: argparse.Namespace) -> None:
    """Save theta_0, run GRPO, save theta_K and direction.json."""
    from sample_effect.io import check_output_dir, output_dir
    from sample_effect.rollouts.prompts import chat_template_prompts, load_rl_prompts
    from sample_effect.rollouts.rewards import get_reward
    from sample_effect.training import train_grpo

    out = check_output_dir(args.out, "--out")
    if (out / "final").exists() and not args.overwrite:
        raise SampleEffectError(f"{out} already holds a finished run (final/); pass --overwrite to replace it")
    cfg = grpo_config_from_args(args)
    reward = get_reward(args.reward)
    prompts = load_rl_prompts(args.prompts)
    model, tok = load_model_from_args(args)
    prompts = chat_template_prompts(prompts, tok, args.chat_template)
    with output_dir(out):
        model.save_pretrained(out / "start")
        tok.save_pretrained(out / "start")
        train_grpo(model, tok, prompts, reward, cfg, out, out / "metrics.csv", progress=not args.quiet)
    from sample_effect.models.loading import load_model

    theta0 = dict(load_model(out / "start", "float64", device=args.device)[0].named_parameters())
    norm = float(sum(((p.detach().double() - theta0[n].detach()) ** 2).sum() for n, p in model.named_parameters()) ** 0.5)
    record = {"start": str(out / "start"), "final": str(out / "final"), "steps": cfg.steps, "norm": norm,
              "model": args.model, "config": {"lr": cfg.update.lr, "prompts_per_step": cfg.prompts_per_step,
                                              "group_size": cfg.group_size, "seed": cfg.seed}}
    (out / "direction.json").write_text(json.dumps(record, indent=1) + "\n")
    print(f"reference direction: {cfg.steps} GRPO steps from {args.model}, ||theta_K - theta_0|| = {norm:.4g}; wrote "
          f"{out / 'start'}, {out / 'final'}, {out / 'direction.json'}; use --direction {out / 'start'} {out / 'final'} "
          f"or --reference-run {out}")
