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


def test_seed_agreement_is_one_for_identical_seeds_and_falls_with_noise():
    from sample_effect.validation.lds import seed_agreement

    rng = np.random.default_rng(0)
    base = rng.normal(size=(30, 1, 4))
    same = seed_agreement(np.repeat(base, 3, axis=1))
    assert same["seed_agreement"] == pytest.approx(1.0) and same["lds_ceiling"] == pytest.approx(1.0)
    noisy = seed_agreement(base + rng.normal(scale=2.0, size=(30, 2, 4)))
    assert noisy["seeds"] == 2 and noisy["seed_agreement"] < 0.6 and noisy["lds_ceiling"] > noisy["seed_agreement"]
    assert seed_agreement(base) is None  # one seed: nothing to compare


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


def _argv(model_dirs, tmp_path, out):
    """`validate lds` on a 12-example pool (TRAIN twice), 2 target examples, 4 subsets of 2 steps, float64."""
    pool = write_jsonl(tmp_path / "pool.jsonl", [{**r, "id": f"ex{i}"} for i, r in enumerate(TRAIN * 2)])
    target = write_jsonl(tmp_path / "target.jsonl", TARGET)
    return ["validate", "lds", "--model", str(model_dirs["gpt2"]), "--data", str(pool), "--target-data", str(target),
            "--subsets", "4", "--fraction", "0.5", "--steps", "2", "--batch-size", "2", "--lr", "1e-3",
            "--bootstrap", "200", "--dtype", "float64", "--out", str(out), "--quiet"]


def test_validate_lds_end_to_end_and_resumes_from_the_cache(model_dirs, tmp_path, capsys):
    out = tmp_path / "lds"
    argv = _argv(model_dirs, tmp_path, out)
    assert main(argv) == 0
    doc = json.loads((out / "lds.json").read_text())
    assert set(doc["methods"]) == {"sgd", "sgd-clip", "adamw", "adamw-trajectory", "adamw-final", "predict-sft"}
    # adamw-final: the trainer's AdamW step at the end of the whole-pool run, from the state saved there
    from sample_effect import load_model
    from sample_effect.data.examples import load_examples, tokenize_examples
    from sample_effect.models.loading import select_parameters
    from sample_effect.scoring.effects import resolve_state
    from sample_effect.scoring.matrix import compute_effect_matrix
    from sample_effect.targets.core import LossTarget
    from sample_effect.training.common import adamw_update

    (final,) = list((out / "cache").glob("trajectory-*/final"))
    model, tok = load_model(final, "float64")
    params = select_parameters(model)
    upd = adamw_update(1e-3, 1.0, 0.0)
    state = resolve_state(model, params, upd, str(final / "optimizer.pt"))
    assert state.params and all(float(st.step) == 2 for st in state.params.values() if st.step is not None)
    pool = tokenize_examples(load_examples(out.parent / "pool.jsonl"), tok)[0]
    tgt = tokenize_examples(load_examples(out.parent / "target.jsonl"), tok)[0]
    want = compute_effect_matrix(model, params, pool, [LossTarget([t]) for t in tgt], upd, state)
    (got,) = [np.load(f) for f in (out / "cache").glob("effects-adamw-final-*.npy")]
    np.testing.assert_allclose(got, want, rtol=1e-10)
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


def test_outside_scores_are_judged_on_the_same_retrains(model_dirs, tmp_path, capsys):
    """--scores: the adamw effect matrix handed back as a .npy or a CSV scores exactly as the built-in adamw."""
    out = tmp_path / "lds"
    argv = [*_argv(model_dirs, tmp_path, out), "--methods", "adamw"]
    assert main(argv) == 0
    (matrix,) = list((out / "cache").glob("effects-adamw-*.npy"))
    e = np.load(matrix)
    assert e.shape == (12, 2)
    ids = [f"ex{i}" for i in range(12)]
    import pandas as pd

    pd.DataFrame({"id": ids[::-1], "v0": e[::-1, 0], "v1": e[::-1, 1]}).to_csv(tmp_path / "s.csv", index=False)
    np.save(tmp_path / "mean.npy", e.mean(1))
    assert main([*argv, "--overwrite", "--scores", f"copy={matrix}", "--scores", f"csv={tmp_path / 's.csv'}",
                 "--scores", f"mean={tmp_path / 'mean.npy'}"]) == 0
    doc = json.loads((out / "lds.json").read_text())["methods"]
    for name in ("copy", "csv"):
        assert doc[name]["lds"] == pytest.approx(doc["adamw"]["lds"])
        assert doc[name]["lds_mean_target"] == pytest.approx(doc["adamw"]["lds_mean_target"])
    assert doc["mean"]["lds"] is None and doc["mean"]["lds_mean_target"] == pytest.approx(doc["adamw"]["lds_mean_target"])
    capsys.readouterr()
    for bad, msg in ((["--scores", "x"], "NAME=FILE"), (["--scores", "adamw=f.npy"], "used twice"),
                     (["--scores", f"y={tmp_path / 'nope.npy'}"], "not found")):
        assert main([*argv, "--overwrite", *bad]) == 2 and msg in capsys.readouterr().err
    np.save(tmp_path / "short.npy", e[:3])
    assert main([*argv, "--overwrite", "--scores", f"s={tmp_path / 'short.npy'}"]) == 2
    assert "expected (12,)" in capsys.readouterr().err
