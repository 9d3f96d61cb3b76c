"""The linear datamodeling score (`validation.lds`, `validate lds`)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import TARGET, TRAIN, write_jsonl

from sample_effect.cli.main import main
from sample_effect.errors import SampleEffectError
from sample_effect.validation.lds import LDSConfig, draw_subsets, lds_scores, summed_effects


def test_an_oracle_prediction_scores_one_and_a_reversed_one_minus_one():
    rng = np.random.default_rng(0)
    actual = rng.normal(size=(12, 3))
    s = lds_scores(actual, actual, n_boot=200)
    assert s["lds"] == pytest.approx(1.0) and s["lds_ci95"] == pytest.approx([1.0, 1.0])
    assert s["lds_mean_target"] == pytest.approx(1.0)
    r = lds_scores(-actual, actual, n_boot=200)
    assert r["lds"] == pytest.approx(-1.0) and r["lds_mean_target"] == pytest.approx(-1.0)
    mean_only = lds_scores(actual.mean(1), actual, n_boot=200)  # e.g. predict-sft: the mean target only
    assert mean_only["lds"] is None and mean_only["lds_mean_target"] == pytest.approx(1.0)
    noisy = lds_scores(actual + rng.normal(size=actual.shape), actual, n_boot=500)
    lo, hi = noisy["lds_ci95"]
    assert lo <= noisy["lds"] <= hi and noisy["lds"] < 1


def test_summed_effects_and_subsets():
    cfg = LDSConfig(subsets=5, fraction=0.4, seed=3)
    subsets = draw_subsets(10, cfg)
    assert len(subsets) == 5 and all(len(s) == 4 and len(set(s)) == 4 for s in subsets)
    assert [s.tolist() for s in subsets] == [s.tolist() for s in draw_subsets(10, cfg)]  # seeded
    e = np.arange(20.0).reshape(10, 2)
    got = summed_effects(e, subsets)
    assert got.shape == (5, 2) and got[0].tolist() == e[subsets[0]].sum(0).tolist()
    with pytest.raises(SampleEffectError, match="fraction"):
        LDSConfig(fraction=1.0).validate()
    with pytest.raises(SampleEffectError, match="whole pool"):
        draw_subsets(2, LDSConfig(subsets=3, fraction=0.9))


def test_validate_lds_end_to_end_and_resumes_from_the_cache(model_dirs, tmp_path, capsys):
    pool = write_jsonl(tmp_path / "pool.jsonl", [{**r, "id": f"ex{i}"} for i, r in enumerate(TRAIN * 2)])
    target = write_jsonl(tmp_path / "target.jsonl", TARGET)
    out = tmp_path / "lds"
    argv = ["validate", "lds", "--model", str(model_dirs["gpt2"]), "--data", str(pool), "--target-data", str(target),
            "--subsets", "4", "--fraction", "0.5", "--steps", "2", "--batch-size", "2", "--lr", "1e-3",
            "--bootstrap", "200", "--dtype", "float64", "--out", str(out), "--quiet"]
    assert main(argv) == 0
    doc = json.loads((out / "lds.json").read_text())
    assert set(doc["methods"]) == {"sgd", "sgd-clip", "adamw", "predict-sft"}
    for name, v in doc["methods"].items():
        for key in ("lds", "lds_ci95", "lds_mean_target", "lds_mean_target_ci95"):
            assert key in v
        assert (v["lds"] is None) == (name == "predict-sft")
    assert (out / "lds.png").exists() and (out / "lds_subsets.csv").exists()
    retrains = sorted(p.name for p in (out / "cache").glob("retrain-*.json"))
    assert len(retrains) == 4
    capsys.readouterr()
    assert main(argv) == 2 and "pass --overwrite" in capsys.readouterr().err
    assert main([*argv, "--overwrite", "--methods", "adamw"]) == 0  # nothing retrains, the effects come back
    assert sorted(p.name for p in (out / "cache").glob("retrain-*.json")) == retrains
    again = json.loads((out / "lds.json").read_text())
    assert again["methods"]["adamw"]["lds"] == pytest.approx(doc["methods"]["adamw"]["lds"])
