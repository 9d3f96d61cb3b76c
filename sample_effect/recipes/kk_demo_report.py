"""The demo's report (`sample_effect.recipes.kk_demo`): report.md from the stages' results, part by part."""

from __future__ import annotations

from typing import Any

from sample_effect.recipes.kk_demo_config import DemoConfig, DemoResult


def rl_report_lines(rl: dict[str, Any] | None) -> list[str]:
    """Part 4 of the report: the RL prediction per start, the real GRPO result and the ordering verdict."""
    from sample_effect.validation.rl_starts import verdict_text

    if rl is None:
        return []
    g = rl["grpo"]
    runs = int(rl.get("runs", 1))
    rows = []
    for s in rl["summaries"]:
        lo, hi = s["predicted_total_change_ci95"]
        train_zv = s.get("train_zero_variance_fraction")
        n_sft = rl.get("sft_examples", {}).get(s["name"], "?")
        rep, (rlo, rhi) = s.get("predicted_total_change_replay"), s.get("predicted_replay_runs_95") or (None, None)
        replayed = "-" if rep is None else f"{rep:+.3f} [{rlo:+.3f}, {rhi:+.3f}]"
        mark = " (leaves [0, 1])" if s.get("predicted_leaves_range") else ""
        se = s.get("actual_total_change_se")
        actual = f"{s['actual_total_change']:+.3f}" + ("" if se is None else f" +- {se:.3f}")
        rows.append(f"| {s['name']} | {n_sft} | {s['start_accuracy']:.3f} | {s['predicted_growth_per_step']:+.4f} | "
                    f"{s['predicted_total_change']:+.3f} [{lo:+.3f}, {hi:+.3f}]{mark} | {replayed} | {actual} | "
                    f"{s['predicted_zero_variance_fraction']:.0%} | {'-' if train_zv is None else f'{train_zv:.0%}'} |")
    verdict = rl["verdict"]
    files = rl.get("files") or {}
    from_files = (" " + "; ".join(f"{name} is fine-tuned on the examples of `{path}`" for name, path in files.items())
                  + ", with the same recipe." if files else "")
    return [
        "## 4. Which SFT start makes RL grow fastest?",
        "",
        f"A style start is the base model fine-tuned on {rl['n_start']} fresh puzzles in one response "
        f"style, with the selections' recipe run for {rl.get('start_steps', '?')} steps.{from_files} Before any RL, "
        f"`predict-rl` predicted the growth of held-out accuracy ({rl['n_held']} puzzles, {rl.get('target_samples', 4)} "
        f"samples each at "
        f"temperature 1) per GRPO step under the all-or-nothing `kk` reward: the positive effect plus the AdamW "
        f"batch-noise term, with a 95% interval, from {g.group_size} rollouts of each of {rl['n_prompts']} training "
        f"puzzles. Then {runs} real GRPO run{'s' if runs > 1 else ''} ({g.steps} steps, {g.prompts_per_step} prompts x "
        f"{g.group_size} rollouts, lr {g.update.lr}, clip 1.0, trainer seeds {g.seed}..{g.seed + runs - 1}) started "
        f"from the same weights; held-out accuracy was measured with {rl.get('eval_samples', 4)} samples per puzzle.",
        "",
        "| start | SFT examples | accuracy at step 0 | predicted growth / step | predicted change [95%] | "
        "replayed change [95% of runs] | actual change" + (" +- SE" if runs > 1 else "") + " | zero-variance groups (start) | (during GRPO) |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        "The predicted change is the first step's expected change times the lr-weighted step count. The replayed "
        f"change runs the whole schedule on the start's frozen gradients with AdamW's moments carried, over "
        f"{rl.get('replay_runs', '?')} batch orders; its interval is the spread of those runs, not a confidence interval. Both are first order. "
        "At this lr an AdamW step already reaches the curvature of held-out accuracy, so read them as the start's "
        "first-step growth, not as the change of the run (docs/experiments.md, Q2e). A prediction marked "
        "'leaves [0, 1]' moves accuracy further than it can go.",
        "",
        f"**Verdict.** {verdict_text(verdict)}" if verdict is not None else "One start only: no ordering to check.",
        "",
        ("One GRPO run per start: the actual change has no error bar, so no pair of starts is resolved, and a sign "
         "agreement may be luck. `demo --rl-runs 4 --rl-eval-samples 8` gives both sides error bars; `sample-effect "
         "validate rl-starts` runs the full protocol (several measurements, baselines, Spearman with intervals). "
         if runs == 1 else f"Actual changes are means +- standard errors over {runs} runs; a pair counts as resolved "
         "only when the actual gap exceeds 1.96 standard errors and the predicted intervals do not overlap. ")
        + "Checkpoints: checkpoints/start-NAME/final (SFT) and "
        "checkpoints/grpo/sft-NAME/run-0/final (GRPO); the rows are in rl_curves.csv and rl_summary.json, the "
        "puzzles in rl_prompts.jsonl (training) and rl_eval.jsonl (held out).",
        "",
        "![RL growth](rl_growth.png)",
        "",
    ]


def selection_verdict_lines(verdict: dict[str, Any] | None) -> list[str]:
    """The selection check in numbers: top-k and bottom-k against the random runs' mean and 95% intervals."""
    if verdict is None:
        return []
    lines = [f"Against {verdict['n_random']} random selections (mean, 95% interval of the mean, 95% prediction "
             "interval of one more random run):", "",
             "| metric | top-k | random mean [95% CI] | random prediction interval | bottom-k |", "|---|---|---|---|---|"]
    for metric, name in (("target_loss_end", "target loss at the end"), ("accuracy_end", "test accuracy at the end")):
        m = verdict.get(metric)
        if m is None:
            continue
        (clo, chi), (plo, phi) = m["random_mean_ci95"], m["random_prediction_interval95"]
        lines.append(f"| {name} | {m['top']:.3f} | {m['random_mean']:.3f} [{clo:.3f}, {chi:.3f}] | "
                     f"[{plo:.3f}, {phi:.3f}] | {m['bottom']:.3f} |")
    return [*lines, "", f"**Verdict.** {verdict.get('verdict', 'no loss metric')}.", ""]


def versions() -> str:
    """Python and the numerical packages the numbers came from (two installs can differ in the last digits)."""
    import platform

    import numpy
    import torch
    import transformers

    return (f"Python {platform.python_version()}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"transformers {transformers.__version__}, numpy {numpy.__version__}")


def write_report(config: DemoConfig, result: DemoResult) -> None:
    """Write report.md into `config.out`: effect per style, the selection runs against their predictions, the top
    examples and the RL part, in the order the demo ran them."""
    from sample_effect.io import atomic_open

    out, table, per_style, summary = config.out, result.table, result.per_style, result.summary
    k, steps, elapsed, model_desc = result.k, result.steps, result.elapsed, result.model_desc
    rl, verdict = result.rl, result.verdict

    lines = [
        "# sample-effect demo: which Knights-and-Knaves examples move the model?",
        "",
        f"Model: `{model_desc}`. SFT pool: {len(table)} examples ({config.n_pool} puzzles with 2-3 people, each "
        "written in three response styles). Target: the loss of the correct `\\boxed{...}` answers on "
        f"{config.n_target} held-out puzzles; the sample effect of an example is the first-order drop of that "
        "loss per unit learning rate after one AdamW step (fresh state, clip 1.0) on the example alone.",
        "",
        "Terms, defined once. A drop (of the target loss) and a change (of accuracy) are signed so that a positive "
        "number is an improvement. The *positive effect* of a step is lr times the mean sample effect of the data: "
        "the change a step on the average example's update would make. The *batch-noise term* (noise effect) is "
        "what a step on a random batch changes beyond that, because batch gradients scatter around their mean: for "
        "SGD the second-order term (lr^2 / 2b) tr(H Sigma); for AdamW, which is not linear in the gradient, the "
        "expected step on a random batch minus the step on the mean gradient. A *zero-variance group* (RL) is a GRPO group "
        "whose rollouts all earn the same reward: its advantages are zero and it contributes no gradient. The "
        "*lr-weighted step count* is the sum of the schedule's learning rates divided by the first step's (the number "
        "of steps for a constant lr); a per-step prediction times it is the first-order change of the whole run.",
        "",
        "## 1. Dataset effect per response style",
        "",
        "| style | mean effect | std | n |",
        "|---|---|---|---|",
        *[f"| {s} | {r['mean']:.4g} | {r['std']:.3g} | {int(r['count'])} |" for s, r in per_style.iterrows()],
        "",
        "![effects by style](effects_by_style.png)",
        "",
        "## 2. Does the ranking pick data that helps?",
        "",
        f"Fine-tuning the base model for {steps} AdamW steps (batch 4, lr {config.lr}) on {k} examples chosen by "
        "effect (top / bottom) or at random. Target loss is the held-out answer loss above; accuracy is greedy "
        f"decoding on {config.n_test} other held-out puzzles under the K&K reward (finished, and the boxed roles "
        "match).",
        "",
        "| selection | mean effect | target loss start -> end | accuracy start -> end |",
        "|---|---|---|---|",
        *[
            f"| {r['selection']} | {r['mean_effect']:.4g} | {r['target_loss_start']:.3f} -> {r['target_loss_end']:.3f} | "
            f"{r['accuracy_start']:.3f} -> {r['accuracy_end']:.3f} |"
            for _, r in summary.iterrows()
        ],
        "",
        *selection_verdict_lines(verdict),
        "![target loss](selection_loss.png)",
        "",
        "### Predicted before training vs what happened",
        "",
        "`predict-sft` replayed the same schedule on gradients frozen at the base weights (positive effect plus the "
        "AdamW batch-noise term, 4 Monte Carlo batch orders). It is a first-order prediction: at this lr it "
        "overshoots the size of the drop by a wide margin (the loss is curved), so read it for the order of the "
        "selections, not the magnitude. The first step alone is where it should be close: the last two columns "
        "set it against the drop measured after step 1 of each run.",
        "",
        "| selection | predicted drop (all steps) | actual drop (all steps) | predicted drop, step 1 | actual drop, step 1 |",
        "|---|---|---|---|---|",
        *[
            f"| {r['selection']} | {r['predicted_drop']:.4g} | {r['actual_drop']:.4g} | {r['predicted_drop_step1']:.4g} | "
            f"{r.get('actual_drop_step1', float('nan')):.4g} |"
            for _, r in summary.iterrows()
        ],
        "",
        "![predicted vs actual](predicted_vs_actual.png)",
        "",
        "![accuracy](selection_accuracy.png)",
        "",
        f"## 3. Top {min(10, len(table))} examples",
        "",
        "The target's format drives this list: the target here is answer-only text, so examples written as a bare "
        "answer share its tokens and rank first, whatever their reasoning is worth. To rank for another kind of "
        "output (chain-of-thought solutions, say), use a target written in that format.",
        "",
        "| rank | id | style | effect | loss | response tokens |",
        "|---|---|---|---|---|---|",
        *[
            f"| {int(r['rank'])} | {r['id']} | {r['style']} | {r['effect']:.4g} | {r['loss']:.3f} | {int(r['n_tokens'])} |"
            for _, r in table.head(10).iterrows()
        ],
        "",
        *rl_report_lines(rl),
        f"Files: effects.csv (every example, ranked), top_k.jsonl (the top {k} in input format), selection.csv, "
        "pool.jsonl, target.jsonl, test.jsonl, the fine-tuned checkpoints under checkpoints/ (model, tokenizer, "
        "optimizer state), and the figures above.",
        "",
        f"Run time: {elapsed:.0f} s. {versions()}.",
    ]
    with atomic_open(out / "report.md") as f:
        f.write("\n".join(lines) + "\n")
