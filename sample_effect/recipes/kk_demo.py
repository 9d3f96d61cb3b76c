"""The Knights-and-Knaves demo pipeline (`sample-effect demo`): the main job end to end on built-in data,
offline, in a few minutes on CPU.

1. Generate Knights-and-Knaves puzzles: an SFT pool in three response styles (answer-only,
   short-cot, long-cot), held-out target puzzles and held-out test puzzles.
2. Rank the pool by sample effect toward the held-out target (minus the gradient of the loss
   of the correct boxed answers), simulating one AdamW step with clipping per example.
3. Fine-tune the base model briefly on the top-k examples and on random k (two seeds), and
   measure held-out target loss and greedy test accuracy.
4. Write effects.csv, top_k.jsonl, figures (PNG) and report.md.

`run_demo(DemoConfig(...))` runs it all; each stage is a function of its own. The default model
is the tiny Qwen2-style base model shipped in the package (built by scripts/build_tiny_base.py);
`DemoConfig.model` ('smollm2' or a directory) picks another.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sample_effect.errors import ConfigError, SampleEffectError, literal
from sample_effect.recipes.kk_demo_config import DemoConfig, DemoResult
from sample_effect.recipes.kk_demo_report import write_report


@dataclass
class DemoRun:
    """What the stages of one demo run share: its settings, the base model's directory and tokenizer, and `say`."""

    config: DemoConfig
    model_dir: Any  # the resolved base model directory; each fine-tuning run loads a fresh copy from it
    tok: Any
    say: Callable[..., None]  # progress lines (`demo: ...`), silent without `config.progress`


@dataclass
class DemoData:
    """The demo's puzzles: the pool, target and test records, the pool as examples, pool and target tokenized."""

    pool: list[dict]
    target: list[dict]
    test: list[dict]
    examples: list  # the pool as Examples (what top_k.jsonl exports)
    tok_pool: list
    tok_target: list

    @property
    def test_items(self) -> list[tuple[str, str]]:
        """The test puzzles as (prompt, answer) pairs for greedy accuracy."""
        return [(r["prompt"], r["answer"]) for r in self.test]


def kk_records(n: int, seed: int, styles: list[str], prefix: str) -> list[dict]:
    """n puzzles (half 2-person, half 3-person) in each style; ids name the style."""
    from sample_effect.data.kk import generate_puzzles, puzzle_record

    recs = []
    for people, count in ((2, n // 2), (3, n - n // 2)):
        for p in generate_puzzles(people, count, seed=seed) if count else []:
            for style in styles:
                recs.append(puzzle_record(p, style, seed=seed, id_prefix=f"{prefix}-{style}"))
    return recs


def sft_recipe(lr: float = 2e-4, steps: int = 120, seed: int = 0, max_new_tokens: int = 320) -> Any:
    """The demo's SFT: AdamW, batch 4, clip 1.0, constant lr, the target loss evaluated after step 1 and 4 more times.

    The defaults are the demo's (20 epochs over 24 examples); both the selections and the RL
    starts are fine-tuned with it.
    """
    from sample_effect.training import SFTConfig
    from sample_effect.training.common import adamw_update

    return SFTConfig(update=adamw_update(lr, clip=1.0), batch_size=4, max_steps=steps, eval_every=max(1, steps // 4),
                     eval_steps=(1,), seed=seed, eval_max_new_tokens=max_new_tokens)


def read_start_files(config: DemoConfig) -> dict[str, tuple[Path, list]]:
    """{NAME: (FILE, its examples)} of `config.rl_start_data`, read once here so that a bad file fails before the
    model loads (missing, malformed or empty: an error naming the file)."""
    from sample_effect.data.examples import load_examples

    data = {}
    for name, path in config.rl_start_data.items():
        if not path.exists():
            raise ConfigError("DemoConfig", f"<rl_start_data> file not found: {literal(path)}")
        data[name] = (path, load_examples(path))  # raises on an empty file too
    return data


def _slug(label: str) -> str:
    """A directory name for a selection label ('random-24 (seed 0)' -> 'random-24-seed-0')."""
    return "-".join("".join(c if c.isalnum() else " " for c in label).split())


def write_data(config: DemoConfig, tok: Any) -> DemoData:
    """Stage 1: generate the pool, target and test puzzles, write them as JSONL into `config.out`, tokenize."""
    from sample_effect.data.examples import examples_from_records, tokenize_examples
    from sample_effect.data.kk import STYLES
    from sample_effect.io import atomic_open

    # Seeds 10_000+ keep the demo's puzzles apart from the base model's pre-training corpus (seed 100).
    base_seed = 10_000 + 3 * config.seed
    pool = kk_records(config.n_pool, base_seed, list(STYLES), "pool")
    target = kk_records(config.n_target, base_seed + 1, ["answer-only"], "target")
    test = kk_records(config.n_test, base_seed + 2, ["answer-only"], "test")
    for name, recs in (("pool.jsonl", pool), ("target.jsonl", target), ("test.jsonl", test)):
        with atomic_open(config.out / name) as f:
            f.writelines(json.dumps(r) + "\n" for r in recs)
    examples = examples_from_records(list(enumerate(pool, 1)), "pool.jsonl")
    tok_pool, _ = tokenize_examples(examples, tok)
    return DemoData(pool, target, test, examples, tok_pool, _tokenized(target, "target.jsonl", tok))


def rank_pool(config: DemoConfig, model: Any, tok: Any, data: DemoData) -> tuple[Any, Any, int]:
    """Stage 2: score the pool toward the target (one AdamW step, clip 1.0); write effects.csv, top_k.jsonl and the
    figure. Returns (the Effects, the ranked table with a `style` column, k)."""
    from sample_effect.data.examples import export_examples
    from sample_effect.engine.core import ComputeConfig
    from sample_effect.io import write_table
    from sample_effect.plots.figures import effects_by_group
    from sample_effect.scoring.effects import score_examples_result
    from sample_effect.targets.core import LossTarget
    out = config.out
    update = sft_recipe(config.lr).update  # the demo's SFT step
    result = score_examples_result(model, tok, data.tok_pool, LossTarget(data.tok_target), update,
                                   compute=ComputeConfig(batch_size=8, progress=config.progress))
    table = result.table()
    table["style"] = table["id"].str.extract(r"^pool-(answer-only|short-cot|long-cot)-")[0]
    write_table(table, out / "effects.csv")
    k = min(config.top_k, len(table))
    by_id = {ex.id: ex for ex in data.examples}
    export_examples([by_id[i] for i in table["id"].head(k)], out / "top_k.jsonl")
    effects_by_group(table, "style", out / "effects_by_style.png", "Sample effect of K&K SFT examples by response style")
    return result, table, k


def train_selections(run: DemoRun, base: Any, data: DemoData, selections: dict[str, list[str]],
                     cfg: Any) -> dict[str, Any]:
    """Stage 3: fine-tune a fresh copy of the base model on each selection; target loss every eval, greedy
    accuracy at the start and end.

    `base` is the already loaded base model (only evaluated here, never trained).

    Greedy accuracy is the slow measurement, so it is taken twice per run (the base model's once,
    shared by every run) rather than at every evaluation; the checkpoint of each run is kept.
    """
    import torch

    from sample_effect.models.loading import load_model
    from sample_effect.rollouts.generation import greedy_accuracy
    from sample_effect.rollouts.rewards import get_reward
    from sample_effect.training import train_sft

    config, tok, say = run.config, run.tok, run.say
    test_items = data.test_items
    index = {ex.id: i for i, ex in enumerate(data.tok_pool)}
    reward = get_reward("kk")
    say(f"greedy accuracy of the base model on {len(test_items)} test puzzles")
    start_acc, _ = greedy_accuracy(base.eval(), tok, test_items, reward, config.max_new_tokens)
    runs = {}
    for n, (label, ids) in enumerate(selections.items(), 1):
        fresh, _ = load_model(run.model_dir, "float32")
        torch.manual_seed(config.seed)
        say(f"[{n}/{len(selections)}] fine-tuning on {label}")
        df = train_sft(fresh, tok, [data.tok_pool[index[i]] for i in ids], cfg, eval_examples=data.tok_target,
                       progress=config.progress, out_dir=config.out / "checkpoints" / f"sft-{_slug(label)}")
        end_acc, _ = greedy_accuracy(fresh.eval(), tok, test_items, reward, config.max_new_tokens)
        df["eval_accuracy"] = float("nan")
        df.loc[df.index[0], "eval_accuracy"], df.loc[df.index[-1], "eval_accuracy"] = start_acc, end_acc
        runs[label] = df
        say(f"{label}: target loss {df['eval_loss'].iloc[-1]:.3f}, test accuracy {end_acc:.3f}")
    return runs


def predict_selections(config: DemoConfig, model: Any, data: DemoData, ranking: tuple[Any, Any, int],
                       selections: dict[str, list[str]], runs: dict[str, Any], cfg: Any) -> Any:
    """Stage 3b: predict each selection's curve (predict-sft) against its real run; write the figures and
    selection.csv. `ranking` is `rank_pool`'s (result, table, k); returns the selection table."""
    import pandas as pd

    from sample_effect.engine.core import ComputeConfig
    from sample_effect.growth.sft import predict_sft_curve
    from sample_effect.io import write_table
    from sample_effect.models.loading import select_parameters
    from sample_effect.plots.figures import curves, predicted_vs_actual_bars

    out, tok_pool = config.out, data.tok_pool
    result, table, k = ranking
    index = {ex.id: i for i, ex in enumerate(tok_pool)}
    predicted = {
        label: predict_sft_curve(model, select_parameters(model), [tok_pool[index[i]] for i in ids], result.target,
                                 cfg, label, replicates=4, compute=ComputeConfig(batch_size=8, progress=config.progress))
        for label, ids in selections.items()
    }
    curves(runs, "step", "eval_loss", out / "selection_loss.png", f"Held-out target loss while fine-tuning on {k} examples",
           "held-out answer loss (nats/token)")
    curves({lab: df.dropna(subset=["eval_accuracy"]) for lab, df in runs.items()}, "step", "eval_accuracy",
           out / "selection_accuracy.png", "Greedy test accuracy (K&K reward), before and after fine-tuning", "accuracy",
           join=False)
    summary = pd.DataFrame(
        [{"selection": lab, "group": lab.split("-")[0], "target_loss_start": df["eval_loss"].iloc[0], "target_loss_end": df["eval_loss"].iloc[-1],
          "accuracy_start": df["eval_accuracy"].iloc[0], "accuracy_end": df["eval_accuracy"].iloc[-1],
          "mean_effect": float(table.set_index("id").loc[selections[lab], "effect"].mean()),
          "predicted_drop": float(predicted[lab].steps["cumulative"].iloc[-1]),
          "predicted_drop_step1": float(predicted[lab].steps["seed_path"].iloc[0]),
          "actual_drop_step1": _first_step_drop(df),
          "actual_drop": float(df["eval_loss"].iloc[0] - df["eval_loss"].iloc[-1])} for lab, df in runs.items()]
    )
    write_table(summary, out / "selection.csv")
    predicted_vs_actual_bars(summary, out / "predicted_vs_actual.png")
    return summary


def _first_step_drop(df: Any) -> float:
    """The target loss's measured drop over step 1 of a run (its metrics evaluate after step 1), else NaN."""
    one = df.loc[df["step"] == 1, "eval_loss"]
    return float(df["eval_loss"].iloc[0] - one.iloc[0]) if len(one) else float("nan")


def describe_model(name: str, model_dir: Path) -> str:
    """How the report names the model: a built-in name as given, a path relative to here, never an install path."""
    from sample_effect.models.registry import NAMED

    if name in (*NAMED, "smollm2"):
        return f"{name} (built in)"
    try:
        return str(Path(model_dir).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return name


def _rl_prompts(config: DemoConfig) -> tuple[list, list]:
    """Fresh GRPO training and held-out puzzles (2-3 people), as RL prompts in the SFT prompt format.

    Written to `config.out` as rl_prompts.jsonl and rl_eval.jsonl, so `train-grpo` or `predict-rl` can go
    on from the demo's checkpoints with the same puzzles.
    """
    from sample_effect.io import atomic_open
    from sample_effect.rollouts.prompts import RLPrompt

    base_seed = 10_000 + 3 * config.seed + 1_000
    train = kk_records(config.rl_prompts, base_seed, ["answer-only"], "rl")
    held = kk_records(config.rl_eval, base_seed + 1, ["answer-only"], "rl-eval")
    for name, recs in (("rl_prompts.jsonl", train), ("rl_eval.jsonl", held)):
        with atomic_open(config.out / name) as f:
            f.writelines(json.dumps({k: r[k] for k in ("id", "prompt", "answer")}) + "\n" for r in recs)
    return [[RLPrompt(r["id"], r["prompt"], r["answer"]) for r in recs] for recs in (train, held)]


def _tokenized(recs: list[dict], name: str, tok: Any) -> list:
    """Records as tokenized examples; `name` is the file their errors point to."""
    from sample_effect.data.examples import examples_from_records, tokenize_examples

    return tokenize_examples(examples_from_records(list(enumerate(recs, 1)), name), tok)[0]


def start_examples(n: int, seed: int, style: str, tok: Any) -> list:
    """The SFT data of one RL start: n fresh puzzles (2-3 people, none from the pool) in `style`, tokenized.

    An RL start is fine-tuned on more examples, and for longer, than a selection (160 examples and
    240 steps against 24 and 120 by default). At seeds 7-10, 120 answer-only steps gave a mean
    greedy 2-person accuracy of 0.31 with 40 examples and 0.47 with these 160, and 3-person 0.094.
    240 steps on the 160 gave 0.51 and 0.19 (see tests/models/test_sft_band.py).
    """
    return _tokenized(kk_records(n, start_puzzle_seed(seed), [style], "start"), f"start-{style}.jsonl", tok)


def start_puzzle_seed(seed: int) -> int:
    """The puzzle seed of `demo --seed SEED`'s RL-start data (`kk_records` draws half 2-, half 3-person puzzles)."""
    return 10_000 + 3 * seed + 2_000


def rl_stage(run: DemoRun, start_data: dict[str, tuple[Path, list]]) -> dict[str, Any] | None:
    """Stage 4: SFT one start per `rl_starts` style and `rl_start_data` file, predict its RL growth, run real GRPO,
    compare the orderings; None when there is no start."""
    from sample_effect.data.examples import tokenize_examples
    from sample_effect.engine.core import ComputeConfig
    from sample_effect.io import atomic_open, write_table
    from sample_effect.models.loading import load_model
    from sample_effect.plots.rl import rl_start_curves
    from sample_effect.training import train_sft
    from sample_effect.training.common import adamw_update
    from sample_effect.training.grpo import GRPOConfig
    from sample_effect.validation.rl_accuracy import AccuracyCurveConfig
    from sample_effect.validation.rl_starts import compare_rl_starts, ordering_verdict, verdict_text

    config, tok, say, out = run.config, run.tok, run.say, run.config.out
    datasets = {style: (lambda s=style: start_examples(config.start_examples, config.seed, s, tok)) for style in config.rl_starts}
    for name, (_, examples) in start_data.items():
        datasets[name] = lambda e=examples: tokenize_examples(e, tok)[0]
    if not datasets:
        return None
    import torch

    ckpt = out / "checkpoints"
    cfg = sft_recipe(config.lr, config.start_steps, config.seed, config.max_new_tokens)
    loaders, sizes = {}, {}
    for name, make in datasets.items():
        data = make()
        sizes[f"sft-{name}"] = len(data)
        say(f"SFT start '{name}': {len(data)} examples, {cfg.max_steps} steps -> {ckpt / f'start-{name}'}")
        fresh, _ = load_model(run.model_dir, "float32")
        torch.manual_seed(config.seed)
        train_sft(fresh, tok, data, cfg, out_dir=ckpt / f"start-{name}", progress=config.progress)
        loaders[f"sft-{name}"] = (lambda d=ckpt / f"start-{name}" / "final": load_model(d, "float32"))
    prompts, held = _rl_prompts(config)
    grpo = GRPOConfig(update=adamw_update(config.rl_lr, clip=1.0), steps=config.rl_steps, prompts_per_step=config.rl_prompts_per_step,
                      group_size=config.group_size, temperature=1.0, max_new_tokens=config.rl_max_new_tokens,
                      eval_every=max(1, config.rl_steps // 4), seed=config.seed)
    curve = AccuracyCurveConfig(eval_samples=config.rl_eval_samples, target_samples=config.rl_target_samples,
                                runs=config.rl_runs, noise_draws=64)
    df, summaries = compare_rl_starts(loaders, prompts, held, "kk", grpo, curve, ComputeConfig(progress=config.progress),
                                      out_dir=ckpt / "grpo", say=say)
    write_table(df, out / "rl_curves.csv")
    verdict = ordering_verdict(summaries) if len(summaries) > 1 else None
    rl_start_curves(df, summaries, out / "rl_growth.png")
    with atomic_open(out / "rl_summary.json") as f:
        json.dump({"starts": [{k: v for k, v in s.items() if k != "prediction"} | {"sft_examples": sizes[s["name"]]}
                              for s in summaries], "verdict": verdict,
                   "grpo": asdict(grpo)}, f, indent=2, default=str)
    if verdict is not None:
        say(verdict_text(verdict))
    return {"summaries": summaries, "verdict": verdict, "grpo": grpo, "n_prompts": len(prompts), "n_held": len(held),
            "n_start": config.start_examples, "start_steps": config.start_steps, "sft_examples": sizes,
            "files": {f"sft-{n}": str(p) for n, (p, _) in start_data.items()}, "replay_runs": curve.replay_runs,
            "runs": curve.runs, "eval_samples": curve.eval_samples, "target_samples": curve.target_samples}


def run_demo(config: DemoConfig) -> DemoResult:
    """`sample-effect demo`: check, generate, rank, fine-tune on selections, predict, RL from SFT starts, report.

    The settings, the start files and `config.out` are checked and the model is loaded before
    anything is written. Prints the report's path and the selection table; returns the result.
    """
    from sample_effect.models.loading import load_model
    from sample_effect.models.registry import resolve_model
    from sample_effect.validation.selection import selection_sets

    config.validate()
    start_data = read_start_files(config)
    out = config.out
    if out.exists() and not out.is_dir():
        raise ConfigError("DemoConfig", f"<out> must be a directory, but {literal(out)} is a file")
    t0 = time.perf_counter()
    # The model loads before anything is written, so a bad model leaves no output behind.
    model_dir = resolve_model(config.model)
    model, tok = load_model(model_dir, "float32")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError("DemoConfig", f"cannot create <out> directory {literal(out)}: {exc.strerror}") from None
    say = (lambda *a: print("demo:", *a, flush=True)) if config.progress else (lambda *a: None)
    data = write_data(config, tok)
    say(f"{len(data.examples)} pool examples, {len(data.tok_target)} target, {len(data.test)} test puzzles; "
        f"model {config.model}")

    result, table, k = rank_pool(config, model, tok, data)
    say(f"ranked in {time.perf_counter() - t0:.0f}s; fine-tuning on top-{k} vs random-{k}")
    selections = selection_sets(table, k, config.random_draws, seed=config.seed)
    steps = max(1, round(config.epochs * k / 4))
    cfg = sft_recipe(config.lr, steps, config.seed, config.max_new_tokens)
    run = DemoRun(config, model_dir, tok, say)
    runs = train_selections(run, model, data, selections, cfg)
    # What the growth predictor said about each selection before training (same schedule, frozen gradients).
    say("predicting each selection's curve (predict-sft) to set against the real runs")
    summary = predict_selections(config, model, data, (result, table, k), selections, runs, cfg)
    verdict = write_selection_verdict(config, summary, say)
    rl = rl_stage(run, start_data)
    per_style = table.groupby("style")["effect"].agg(["mean", "std", "count"]).sort_values("mean", ascending=False)
    demo = DemoResult(describe_model(config.model, Path(model_dir)), table, per_style, summary, k, steps, time.perf_counter() - t0, rl, verdict)
    write_report(config, demo)
    if per_style.empty:
        raise SampleEffectError("demo produced no effects")
    print(f"demo: done in {demo.elapsed:.0f}s; report: {out / 'report.md'}")
    print(summary.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    return demo


def write_selection_verdict(config: DemoConfig, summary: Any, say: Callable[..., None]) -> dict[str, Any] | None:
    """Top-k and bottom-k against the random draws, written to selection_verdict.json; None with under 2 draws."""
    from sample_effect.io import atomic_open
    from sample_effect.validation.selection import selection_verdict

    if config.random_draws < 2:
        return None
    verdict = selection_verdict(summary)
    with atomic_open(config.out / "selection_verdict.json") as f:
        json.dump(verdict, f, indent=2)
    say(verdict.get("verdict", ""))
    return verdict
