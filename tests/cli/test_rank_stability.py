"""`rank --stability`: the comparison table next to --out, the printed summary, and the checks on its flags."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from sample_effect.cli.main import main


def rank_argv(model_dirs, data_files, tmp_path: Path, *extra: str) -> list[str]:
    return ["rank", "--model", str(model_dirs["gpt2"]), "--data", str(data_files["train"]), "--dtype", "float64",
            "--optimizer", "adamw", "--max-grad-norm", "1", "--out", str(tmp_path / "effects.csv"), "--quiet", *extra]


def test_rank_stability_writes_the_rows_and_prints_the_verdicts(model_dirs, data_files, tmp_path: Path, capsys) -> None:
    argv = rank_argv(model_dirs, data_files, tmp_path, "--target-data", str(data_files["target"]), "--stability",
                     "--stability-resamples", "3", "--stability-checkpoints", str(model_dirs["gpt2"]),
                     "--stability-top-k", "2")
    assert main(argv) == 0
    out = capsys.readouterr().out
    rows = pd.read_csv(tmp_path / "effects.stability.csv")
    assert list(rows["source"]) == ["target-resample"] * 3 + [f"checkpoint:{model_dirs['gpt2']}"] + ["order"] * 2
    assert rows["spearman"].between(-1, 1).all()
    assert (rows[rows["source"] != "target-resample"][["spearman", "topk_overlap"]] == 1.0).all().all()
    assert "top-2 keeps" in out and "under resampled targets" in out and "under other example orders" in out
    assert "wrote 6 stability comparisons to" in out and (tmp_path / "effects.csv").exists()


def test_rank_stability_self_target_and_explicit_out(model_dirs, data_files, tmp_path: Path, capsys) -> None:
    path = tmp_path / "stab.csv"
    argv = rank_argv(model_dirs, data_files, tmp_path, "--target", "self", "--stability", "--stability-resamples", "2",
                     "--stability-orders", "1", "--top-k", "3", "--export", str(tmp_path / "top.jsonl"),
                     "--stability-out", str(path))
    assert main(argv) == 0
    rows = pd.read_csv(path)
    assert list(rows["source"]) == ["target-resample"] * 2 + ["order"]
    assert "top-3 keeps" in capsys.readouterr().out
    assert main(argv) == 2  # the stability table exists now and --overwrite is not given
    assert "output file already exists" in capsys.readouterr().err


@pytest.mark.parametrize(("extra", "message"), [
    (["--target", "self", "--stability-orders", "3"], "--stability-orders only applies with --stability"),
    (["--target", "self", "--stability", "--stability-out", "x.txt"], "--stability-out must end in .csv or .parquet"),
    (["--target", "self", "--stability", "--stability-out", "{tmp}/effects.csv"], "must differ from --out"),
    (["--direction", "{model}", "{model}", "--stability", "--stability-resamples", "2"],
     "--stability-resamples resamples a target set"),
    (["--target", "self", "--stability", "--stability-resamples", "0", "--stability-orders", "0"], "nothing to compare"),
    (["--target", "self", "--stability", "--stability-checkpoints", "{tmp}"], "--stability-checkpoints: model directory has no"),
])
def test_rank_stability_flag_errors(model_dirs, data_files, tmp_path: Path, capsys, extra, message) -> None:
    extra = [a.replace("{tmp}", str(tmp_path)).replace("{model}", str(model_dirs["gpt2"])) for a in extra]
    assert main(rank_argv(model_dirs, data_files, tmp_path, *extra)) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "effects.csv").exists()  # checked before any compute


def test_rank_stability_direction_skips_resampling(model_dirs, data_files, tokenizer, tmp_path: Path, capsys,
                                                   caplog) -> None:
    import torch

    from sample_effect.models.tiny import build_tiny_model, save_model

    final = tmp_path / "final"
    save_model(build_tiny_model("gpt2", tokenizer, torch.float64, seed=7), tokenizer, final)
    argv = rank_argv(model_dirs, data_files, tmp_path, "--direction", str(model_dirs["gpt2"]), str(final),
                     "--stability", "--stability-orders", "1")
    code = main(argv)
    cap = capsys.readouterr()
    assert code == 0, cap.err
    assert "target resampling skipped" in caplog.text
    assert list(pd.read_csv(tmp_path / "effects.stability.csv")["source"]) == ["order"]


def test_rank_help_lists_the_stability_flags(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["rank", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for flag, default in [("--stability-resamples N", "(default: 8)"), ("--stability-orders N", "(default: 2)"),
                          ("--stability-checkpoints DIR [DIR ...]", "(default: none)"),
                          ("--stability-out FILE", "(default: <--out stem>.stability.csv next to --out)")]:
        assert flag in text and default in text
