"""The demo end to end (small sizes) and the shipped tiny base model."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

import sample_effect
from sample_effect.cli.main import main
from sample_effect.models.registry import TINY, resolve_model
from sample_effect.rollouts.prompts import load_rl_prompts


def test_shipped_tiny_model_loads_and_knows_kk():
    from sample_effect import load_model
    from sample_effect.rollouts.generation import sample

    model, tok = load_model(resolve_model("tiny"))
    info = json.loads((TINY / "build_info.json").read_text())
    assert info["params"] == sum(p.numel() for p in model.parameters())
    c = sample(model, tok, "Question:\nA very special island is inhabited only by knights and knaves.", max_new_tokens=12)[0]
    assert "knight" in c.text or "knave" in c.text


@pytest.mark.slow
def test_demo_writes_report_figures_and_tables(tmp_path, capsys, monkeypatch):
    import matplotlib.lines

    import sample_effect.plots.figures as figures
    import sample_effect.plots.rl as rl_plots

    drawn = {}
    original = figures.save_figure

    def keep(fig, path):  # look at every figure's accuracy axes before it is written
        axes = [ax for ax in fig.axes if "accuracy" in ax.get_ylabel().lower()]
        drawn[Path(path).name] = [(line.get_ydata(), [t.get_text() for t in ax.texts]) for ax in axes
                                  for line in ax.get_lines() if isinstance(line, matplotlib.lines.Line2D)]
        original(fig, path)

    monkeypatch.setattr(figures, "save_figure", keep)
    monkeypatch.setattr(rl_plots, "save_figure", keep)
    out = tmp_path / "demo"
    # A start from a data file, as a re-distilled set would be (`redistill` writes this format).
    mine = tmp_path / "mine.jsonl"
    mine.write_text("".join(json.dumps({"id": f"m{i}", "prompt": "Who is a knight?\n",
                                        "response": "The final answer is: \\boxed{Ann is a knight}."}) + "\n"
                            for i in range(3)))
    code = main(["demo", "--out", str(out), "--rl-start-data", f"mine={mine}", "--n-pool", "4", "--n-target", "2", "--n-test", "2", "--top-k", "3",
                 "--epochs", "1", "--max-new-tokens", "16", "--start-examples", "4", "--start-steps", "2", "--rl-prompts", "4", "--rl-eval", "2", "--rl-steps", "2",
                 "--rl-prompts-per-step", "2", "--group-size", "2", "--rl-max-new-tokens", "12", "--rl-runs", "2", "--quiet"])
    assert code == 0, capsys.readouterr().err
    for f in ("report.md", "effects.csv", "top_k.jsonl", "selection.csv", "effects_by_style.png",
              "selection_loss.png", "selection_accuracy.png", "predicted_vs_actual.png", "rl_growth.png",
              "rl_curves.csv", "rl_summary.json", "rl_prompts.jsonl", "rl_eval.jsonl"):
        assert (out / f).stat().st_size > 0, f
    table = pd.read_csv(out / "effects.csv")
    assert len(table) == 12 and set(table["style"]) == {"answer-only", "short-cot", "long-cot"}
    assert len((out / "top_k.jsonl").read_text().splitlines()) == 3
    report = (out / "report.md").read_text()
    assert "effects_by_style.png" in report and "| top-3 |" in report and "predicted drop" in report
    assert "run for 2 steps" in report
    sel = pd.read_csv(out / "selection.csv")
    assert {"predicted_drop", "actual_drop"} <= set(sel.columns) and sel["predicted_drop"].notna().all()
    # the first step's drop is measured (one step here, so it is the whole run's drop) and set beside its prediction
    assert sel["actual_drop_step1"].to_numpy() == pytest.approx(sel["actual_drop"].to_numpy(), rel=1e-12)
    assert "actual drop, step 1" in report
    # terms defined before use, the top-k's format caveat, no install path
    assert report.index("Terms, defined once") < report.index("positive effect plus") < report.index("lr-weighted step count.")
    assert "The target's format drives this list" in report and "`tiny (built in)`" in report
    assert str(Path(sample_effect.__file__).parent) not in report  # files the user named are quoted as given
    # Part 4: two SFT starts, each with a prediction and a real GRPO run, and a verdict on their order.
    rl = json.loads((out / "rl_summary.json").read_text())
    assert [s["name"] for s in rl["starts"]] == ["sft-answer-only", "sft-short-cot", "sft-mine"]
    assert [s["sft_examples"] for s in rl["starts"]] == [4, 4, 3]
    assert f"sft-mine is fine-tuned on the examples of `{mine}`" in report and "| sft-mine | 3 |" in report
    assert rl["verdict"]["predicted_order"] and "## 4. Which SFT start" in report and "**Verdict.**" in report
    # Two runs per start: the actual changes have error bars, and the verdict counts resolved pairs and ties.
    assert rl["verdict"]["has_error_bars"] and "actual change +- SE" in report and "pairs are resolved" in report
    assert all(s["actual_total_change_se"] is not None for s in rl["starts"])
    assert len(load_rl_prompts(out / "rl_prompts.jsonl")) == 4 and len(load_rl_prompts(out / "rl_eval.jsonl")) == 2
    curves = pd.read_csv(out / "rl_curves.csv")
    assert set(curves["step"]) == {0, 1, 2} and curves[["actual", "predicted", "predicted_replay"]].notna().all().all()
    assert "replayed change [95% of runs]" in report and "over 16 batch orders" in report
    # No figure plots an accuracy outside [0, 1]; a prediction beyond it is drawn at the bound and labelled.
    assert "rl_growth.png" in drawn and "selection_accuracy.png" in drawn
    for name, lines in drawn.items():
        for ydata, _texts in lines:
            values = [float(v) for v in ydata if v == v]
            assert all(-1e-9 <= v <= 1 + 1e-9 for v in values), (name, values)
    # The demo keeps what it fine-tunes, loadable as a model directory.
    for d in ("sft-top-3", "start-short-cot", "start-mine", "grpo/sft-answer-only/run-0", "grpo/sft-mine/run-0"):
        assert (out / "checkpoints" / d / "final" / "config.json").exists(), d
        assert (out / "checkpoints" / d / "final" / "tokenizer.json").exists(), d


def test_demo_flags_default_to_the_recipe_config():
    """`demo` with no flags runs `DemoConfig()`: the command's defaults and the recipe's are the same."""
    from sample_effect.cli.demo import config_from_args
    from sample_effect.cli.main import build_parser
    from sample_effect.recipes.kk_demo_config import DemoConfig

    assert config_from_args(build_parser().parse_args(["demo"])) == DemoConfig()
