"""The `Analyzer` facade: every method equals the library call it wraps, on the same settings."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import write_jsonl

from sample_effect import (
    Analyzer,
    ComputeConfig,
    Effects,
    LossTarget,
    SampleEffectError,
    SelfTarget,
    SFTConfig,
    UpdateConfig,
    load_examples,
)
from sample_effect.data.examples import tokenize_examples
from sample_effect.growth.sft import predict_sft_curve
from sample_effect.models.loading import select_parameters
from sample_effect.scoring.effects import score_examples_result
from sample_effect.targets.core import resolve_target
from sample_effect.training.common import adamw_update

QUIET = ComputeConfig(progress=False)
ADAMW = UpdateConfig("adamw", lr=1e-3, clip=1.0)


@pytest.fixture(scope="module")
def analyzer(model_dirs):
    return Analyzer.from_pretrained(model_dirs["gpt2"], dtype="float64", update=ADAMW, compute=QUIET)


def test_score_equals_score_examples_and_accepts_paths(analyzer, data_files):
    """A path, Examples or a Target give the library's effects bit for bit; `top` and `save` agree with `table`."""
    tok = analyzer.tokenizer
    target = LossTarget(tokenize_examples(load_examples(data_files["target"]), tok)[0])
    want = score_examples_result(analyzer.model, tok, load_examples(data_files["train"]), target, ADAMW, compute=QUIET)
    got = analyzer.score(data_files["train"], data_files["target"])
    assert isinstance(got, Effects)
    np.testing.assert_array_equal(got.effect, want.effect)
    assert got.ids == want.ids
    same = analyzer.score(load_examples(data_files["train"]), target)
    np.testing.assert_array_equal(same.effect, want.effect)
    table = got.table()
    pd.testing.assert_frame_equal(got.top(2), table.head(2))
    assert got.top(0).empty and list(got.top(2)["rank"]) == [1, 2]


def test_save_writes_the_ranked_table(analyzer, data_files, tmp_path):
    got = analyzer.score(data_files["train"], SelfTarget())
    for name in ("effects.csv", "effects.parquet"):
        path = got.save(tmp_path / name)
        back = pd.read_csv(path) if name.endswith(".csv") else pd.read_parquet(path)
        assert list(back["id"]) == list(got.table()["id"])
        np.testing.assert_allclose(back["effect"], got.table()["effect"], rtol=1e-9)


def test_cache_dir_resumes_with_the_same_effects(analyzer, data_files, tmp_path):
    cached = analyzer.with_settings(cache_dir=tmp_path / "cache")
    first = cached.score(data_files["train"], data_files["target"])
    assert any((tmp_path / "cache").rglob("manifest.json"))
    again = cached.score(data_files["train"], data_files["target"])
    np.testing.assert_array_equal(first.effect, again.effect)
    np.testing.assert_array_equal(first.effect, analyzer.score(data_files["train"], data_files["target"]).effect)


def test_predict_sft_equals_predict_sft_curve(analyzer, data_files):
    cfg = SFTConfig(update=adamw_update(1e-3), batch_size=2, max_steps=3, seed=0)
    tok = analyzer.tokenizer
    train = tokenize_examples(load_examples(data_files["train"]), tok)[0]
    target = tokenize_examples(load_examples(data_files["target"]), tok)[0]
    params = select_parameters(analyzer.model)
    g = resolve_target(LossTarget(target), analyzer.model, params, train, QUIET)
    want = predict_sft_curve(analyzer.model, params, train, g, cfg, "data", 2, compute=QUIET, target_examples=target)
    got = analyzer.predict_sft(data_files["train"], data_files["target"], cfg, replicates=2)
    pd.testing.assert_frame_equal(got.steps, want.steps)


def test_explain_and_errors(analyzer, data_files, tmp_path):
    assert "ghost" in analyzer.explain(data_files["train"]) or "vmap" in analyzer.explain(data_files["train"])
    empty = write_jsonl(tmp_path / "empty.jsonl", [])
    with pytest.raises(SampleEffectError):
        analyzer.score(empty, SelfTarget())
    with pytest.raises(SampleEffectError):
        Analyzer(analyzer.model, analyzer.tokenizer, update=UpdateConfig("nope"))


def test_project_then_score_any_target(analyzer, data_files, tmp_path):
    """Projected effects toward the loss target track the exact ones (k = 4096 >> the examples' rank)."""
    from sample_effect.engine.projection import ProjectionConfig

    sgd = analyzer.with_settings(update=UpdateConfig("sgd", lr=1e-3))
    cache = sgd.project(data_files["train"], tmp_path / "proj", ProjectionConfig(dim=4096, kind="gaussian", seed=0))
    exact = sgd.score(data_files["train"], data_files["target"])
    g = resolve_target(sgd.target(data_files["target"]), sgd.model, sgd.chosen, sgd.tokenize(data_files["train"]), QUIET)
    est = cache.scores(g.vector)
    assert cache.ids == exact.ids
    assert np.corrcoef(est, exact.effect)[0, 1] > 0.9


def test_target_accepts_a_resolved_vector(analyzer, data_files):
    tok = analyzer.tokenizer
    train = tokenize_examples(load_examples(data_files["train"]), tok)[0]
    g = resolve_target(LossTarget(tokenize_examples(load_examples(data_files["target"]), tok)[0]),
                       analyzer.model, analyzer.chosen, train, QUIET)
    a = analyzer.score(train, g)
    b = analyzer.score(train, data_files["target"])
    np.testing.assert_array_equal(a.effect, b.effect)
    assert torch.equal(a.target.vector[next(iter(g.vector))], g.vector[next(iter(g.vector))])


def test_from_pretrained_resolves_built_in_names():
    az = Analyzer.from_pretrained("tiny-small")
    assert az.chosen and az.state is None


def _length_reward(prompt, completion, answer, finished=True):
    """A reward with variance within a group: the completion's length in characters."""
    return float(len(completion))


def test_predict_rl_equals_predict_rl(analyzer, data_files):
    """The facade samples the same groups (same seeds) and returns the library's typed growth."""
    from sample_effect.growth.rl import predict_rl
    from sample_effect.rollouts.prompts import RLPrompt

    prompts = [RLPrompt(ex.id, ex.prompt or "", "") for ex in load_examples(data_files["train"])[:3]]
    sgd = analyzer.with_settings(update=UpdateConfig("sgd", lr=1e-3))
    settings = {"group_size": 2, "max_new_tokens": 3, "noise": False, "n_boot": 50, "prompts_per_step": 2}
    got = sgd.predict_rl(prompts, _length_reward, data_files["target"], **settings)
    target = sgd.target(data_files["target"])
    want = predict_rl(sgd.model, sgd.tokenizer, prompts, _length_reward, target, sgd.update, params=sgd.chosen,
                      compute=QUIET, **settings)
    assert got.growth.growth_rate == want.growth.growth_rate
    assert got.growth.positive_effect_ci95 == want.growth.positive_effect_ci95
    np.testing.assert_array_equal(got.effects.effect, want.effects.effect)
