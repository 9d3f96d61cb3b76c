"""`validate rl-curves`: predicted GRPO growth overlaid on real train_grpo runs, per starting checkpoint."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import TARGET, TRAIN, write_jsonl

from sample_effect.cli.main import main
from sample_effect.training.common import adamw_update
from sample_effect.training.grpo import GRPOConfig
from sample_effect.validation.rl_curves import agreement, grpo_lrs, slope, trainer_update


def test_rl_curves_cli_two_checkpoints(model_dirs, tmp_path, capsys):
    rl = write_jsonl(tmp_path / "rl.jsonl", [{"id": f"p{i}", "prompt": r["prompt"], "answer": ""} for i, r in enumerate(TRAIN[:4])])
    tgt = write_jsonl(tmp_path / "target.jsonl", TARGET)
    out = tmp_path / "rl_curves.json"
    models = [str(model_dirs["gpt2"]), str(model_dirs["llama"])]
    argv = ["validate", "rl-curves", "--model", models[0], "--model", models[1], "--prompts", str(rl),
            "--reward", "test_rl_predict:long_completion", "--target-data", str(tgt), "--steps", "3",
            "--prompts-per-step", "2", "--group-size", "4", "--max-new-tokens", "3", "--lr", "1e-3",
            "--runs", "2", "--dtype", "float64", "--out", str(out), "--quiet"]
    assert main(argv) == 0, capsys.readouterr().err
    doc = json.loads(out.read_text())
    assert [m["name"] for m in doc["models"]] == models
    assert set(doc["agreement"]) == {"n_models", "same_order"}
    rows = pd.read_csv(tmp_path / "rl_curves.csv")
    assert len(rows) == 2 * 2 * 4  # models x runs x (steps 0..3)
    for m in doc["models"]:
        part = rows[rows["model"] == m["name"]]
        start = part[part["step"] == 0]
        # step 0 is evaluated before any update: the actual loss is the loss the prediction started from
        np.testing.assert_allclose(start["actual"], m["start_loss"], rtol=1e-10)
        # constant lr: the predicted curve is a straight line with the predicted growth as slope
        np.testing.assert_allclose(part["predicted"], m["start_loss"] - m["predicted_growth_per_step"] * part["step"], rtol=1e-10)
        assert m["predicted_total_change"] == pytest.approx(3 * m["predicted_growth_per_step"])
        g2 = m["prediction"]["growth_rate_second_order"]
        assert g2 is not None and m["predicted_growth_second_order"] == g2
        np.testing.assert_allclose(part["predicted_second_order"], m["start_loss"] - g2 * part["step"], rtol=1e-10)
        ends = part[part["step"] == 3].set_index("run")["actual"]
        assert m["actual_total_change"] == pytest.approx(float((start.set_index("run")["actual"] - ends).mean()))
        assert m["prediction"]["optimizer"] == "adamw" and m["prediction"]["clip"] == 1.0  # the trainer's update
        assert m["predicted_growth_per_step"] == pytest.approx(m["prediction"]["growth_rate"])
    assert (tmp_path / "rl_curves.png").stat().st_size > 0
    assert main(["plot", "curves", str(tmp_path / "rl_curves.csv"), "--out", str(tmp_path / "again.png")]) == 0
    assert "2 checkpoint(s)" in capsys.readouterr().out and (tmp_path / "again.png").stat().st_size > 0
    assert main(argv) == 2 and "already exists" in capsys.readouterr().err
    assert main([*argv, "--overwrite", "--runs", "0"]) == 2 and "--runs must be >= 1" in capsys.readouterr().err


def test_lr_schedule_and_trainer_update_follow_the_grpo_trainer():
    cfg = GRPOConfig(update=adamw_update(1e-3, clip=0.5, weight_decay=0.1), steps=6, warmup_steps=2, schedule="cosine")
    lrs = grpo_lrs(cfg)
    assert len(lrs) == 6 and lrs[0] < lrs[1] <= 1e-3 and lrs[-1] < lrs[2]
    upd = trainer_update(cfg)
    assert (upd.optimizer, upd.lr, upd.clip, upd.weight_decay) == ("adamw", 1e-3, 0.5, 0.1)


def test_slope_and_agreement():
    assert slope([0, 1, 2, 3], [1.0, 0.9, 0.8, 0.7]) == pytest.approx(-0.1)
    assert np.isnan(slope([2, 2], [1.0, 0.5]))
    summaries = [{"predicted_growth_per_step": p, "actual_growth_per_step": a} for p, a in ((1, 3), (2, 2), (3, 1))]
    assert agreement(summaries)["spearman"] == pytest.approx(-1.0)
    assert agreement(summaries[:2]) == {"n_models": 2, "same_order": False}
