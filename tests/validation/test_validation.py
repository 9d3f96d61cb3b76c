"""The linearisation check: at small lr, lr * e(s) predicts the real one-step change (Pearson >= 0.99)."""

from __future__ import annotations

import pytest
from conftest import TARGET, TRAIN

from sample_effect import UpdateConfig, load_model
from sample_effect.data.examples import examples_from_records, tokenize_examples
from sample_effect.models.loading import select_parameters
from sample_effect.validation.linearization import linearization_check, plot_linearization


@pytest.mark.parametrize(("arch", "update"), [("gpt2", UpdateConfig("sgd")), ("qwen2", UpdateConfig("adamw", clip=1.0))])
def test_small_lr_linearisation_is_tight(model_dirs, tmp_path, arch, update):
    model, tok = load_model(model_dirs[arch], "float64")
    rows = TRAIN + [{"id": f"x{i}", "prompt": r["prompt"], "response": r["response"]} for i, r in enumerate(TARGET)]
    exs, _ = tokenize_examples(examples_from_records(list(enumerate(rows, 1))), tok)
    target, _ = tokenize_examples(examples_from_records(list(enumerate(TARGET, 1))), tok)
    small = 1e-6 if update.optimizer == "sgd" else 1e-7
    res = linearization_check(model, select_parameters(model), exs, target, update, [small, 1e3 * small])
    first = res.summary.iloc[0]
    assert first["pearson"] >= 0.99 and first["mean_abs_rel_error"] < 1e-2, res.summary
    assert len(res.rows) == 2 * len(exs)
    plot_linearization(res, str(tmp_path / "lin.png"))
    assert (tmp_path / "lin.png").stat().st_size > 0


def test_validate_command_writes_metrics_and_figure(model_dirs, data_files, tmp_path):
    import json

    from sample_effect.cli.main import main

    out = tmp_path / "v"
    assert main(["validate", "linearization", "--model", str(model_dirs["llama"]), "--dtype", "float64",
                 "--data", str(data_files["train"]), "--target-data", str(data_files["target"]), "--out", str(out),
                 "--lrs", "1e-6,1e-3", "--quiet"]) == 0
    summary = json.loads((out / "linearization.json").read_text())["summary"]
    assert [s["lr"] for s in summary] == [1e-6, 1e-3] and summary[0]["pearson"] >= 0.99
    assert (out / "linearization.png").stat().st_size > 0 and (out / "linearization.csv").exists()
    assert main(["validate", "linearization", "--model", str(model_dirs["llama"]), "--data", str(data_files["train"]),
                 "--target-data", str(data_files["target"]), "--out", str(out), "--lrs", "x"]) == 2
