"""`sample-effect plot` and token-position log-prob quantiles (issue 4, items 5 and 6).

Inputs are written here in the exact formats the producing commands write; the replay format is
also checked against a real `train-grpo` run on the tiny float64 model.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import TRAIN, write_jsonl

from sample_effect.analysis.quantiles import logprob_quantiles, rare_token_positions, read_replay
from sample_effect.cli.main import main
from sample_effect.errors import SampleEffectError

PNG = b"\x89PNG\r\n\x1a\n"


def is_png(p: Path) -> bool:
    return p.read_bytes()[:8] == PNG


def is_svg(p: Path) -> bool:
    head = p.read_bytes()[:400]
    return head.startswith(b"<?xml") and b"<svg" in p.read_bytes()


def run(argv: list[object], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_error(argv: list[object], capsys, needle: str, outputs: list[Path]) -> None:
    """Exit 2, exactly one `sample-effect: error:` line holding `needle`, and no output file left."""
    code, _, err = run(argv, capsys)
    lines = [x for x in err.splitlines() if x.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("sample-effect: error: "), err
    assert needle in lines[0], (needle, lines[0])
    assert not any(p.exists() for p in outputs)


# --------------------------------------------------------------------------------------------
# Replay buffers: the real format, and quantiles against numpy by hand
# --------------------------------------------------------------------------------------------


def replay_line(step: int, k: int, lps: list[float]) -> dict:
    """One rollout as `trainers.grpo.train_grpo` writes it."""
    return {"step": step, "prompt_id": f"p{k // 4}", "completion": "x" * len(lps), "finished": True,
            "reward": float(k % 2), "advantage": 0.5 - k % 2, "logprobs": lps}


def hand_replay(root: Path, lengths: dict[int, list[int]], seed: int = 0) -> dict[int, list[list[float]]]:
    """Write root/replay/step-XXXXX.jsonl with random log-probs; return them per step."""
    rng = np.random.default_rng(seed)
    (root / "replay").mkdir(parents=True)
    out = {}
    for step, lens in lengths.items():
        rows = [(-rng.exponential(2.0, n)).tolist() for n in lens]
        out[step] = rows
        write_jsonl(root / "replay" / f"step-{step:05d}.jsonl", [replay_line(step, k, r) for k, r in enumerate(rows)])
    return out


def expected(rows: list[list[float]], q: float, min_count: int, bucket: int) -> dict[int, tuple[float, int]]:
    """{bucket start: (quantile or nan, count)} computed with numpy.quantile."""
    pooled: dict[int, list[float]] = {}
    for r in rows:
        for t, v in enumerate(r):
            pooled.setdefault(t // bucket * bucket, []).append(v)
    return {p: (float(np.quantile(v, q)) if len(v) >= min_count else float("nan"), len(v)) for p, v in pooled.items()}


@pytest.mark.parametrize(("q", "min_count", "bucket"), [(0.01, 5, 1), (0.25, 3, 3), (0.5, 1, 1)])
def test_quantiles_equal_numpy_by_hand(tmp_path, q, min_count, bucket):
    lengths = {1: [7, 3, 9, 5, 9, 1, 6, 8], 2: [2, 4, 4, 10, 3, 7]}
    rows = hand_replay(tmp_path, lengths)
    table, pivot = logprob_quantiles(tmp_path, q=q, min_count=min_count, bucket=bucket)
    assert list(table.columns) == ["step", "position", "quantile", "count"]
    assert sorted(set(table["step"])) == [1, 2]
    for step, rs in rows.items():
        want = expected(rs, q, min_count, bucket)
        got = table[table["step"] == step].set_index("position")
        assert sorted(got.index) == sorted(want)
        for p, (v, n) in want.items():
            assert got.loc[p, "count"] == n
            if np.isnan(v):
                assert np.isnan(got.loc[p, "quantile"]) and n < min_count
            else:
                assert got.loc[p, "quantile"] == pytest.approx(v, rel=1e-12, abs=1e-12)
                assert pivot.loc[step, p] == pytest.approx(v, rel=1e-12, abs=1e-12)
    # the pivot: steps x every bucket from 0 to the longest completion, NaN where too few tokens
    assert list(pivot.index) == [1, 2]
    assert list(pivot.columns) == list(range(0, 10, bucket))
    assert np.isnan(pivot.loc[1, 9]) if bucket == 1 else True  # step 1 has no position 9
    # the replay dir itself and one step file work too
    assert table.equals(logprob_quantiles(tmp_path / "replay", q=q, min_count=min_count, bucket=bucket)[0])
    one = logprob_quantiles(tmp_path / "replay" / "step-00002.jsonl", q=q, min_count=min_count, bucket=bucket)[0]
    assert one.reset_index(drop=True).equals(table[table["step"] == 2].reset_index(drop=True))


def test_default_quantile_is_one_percent_and_min_count_five(tmp_path):
    rows = hand_replay(tmp_path, {3: [4] * 6})  # 6 tokens at positions 0..3
    table, _ = logprob_quantiles(tmp_path)
    col = [r[0] for r in rows[3]]
    assert table.loc[table["position"] == 0, "quantile"].item() == pytest.approx(np.quantile(col, 0.01), rel=1e-12)
    rows = hand_replay(tmp_path / "b", {3: [4] * 4})  # 4 tokens per position: below min_count 5
    assert logprob_quantiles(tmp_path / "b")[0]["quantile"].isna().all()


@pytest.mark.parametrize("q", [0.01, 0.2, 1.0])
def test_rare_token_positions_equal_a_loop_by_hand(tmp_path, q):
    rows = hand_replay(tmp_path, {1: [7, 3, 9, 5, 9, 1, 6, 8], 4: [2, 4, 4, 10, 3, 7]}, seed=3)
    got = rare_token_positions(read_replay(tmp_path), q=q).set_index("step")
    assert list(got.index) == [1, 4]
    for step, rs in rows.items():
        flat = [v for r in rs for v in r]
        thr = float(np.quantile(flat, q))
        pos = [t for r in rs for t, v in enumerate(r) if v <= thr]
        rel = [t / len(r) for r in rs for t, v in enumerate(r) if v <= thr]
        assert got.loc[step, "tokens"] == len(flat)
        assert got.loc[step, "threshold"] == pytest.approx(thr, rel=1e-12)
        assert got.loc[step, "rare"] == len(pos) >= 1
        assert got.loc[step, "median_position"] == pytest.approx(float(np.median(pos)), rel=1e-12)
        assert got.loc[step, "mean_relative_position"] == pytest.approx(sum(rel) / len(rel), rel=1e-12)
    # rare tokens placed at the start of every completion: relative position 0
    (tmp_path / "c" / "replay").mkdir(parents=True)
    write_jsonl(tmp_path / "c" / "replay" / "step-00001.jsonl",
                [replay_line(1, k, [-9.0] + [-0.1] * 5) for k in range(4)])
    one = rare_token_positions(read_replay(tmp_path / "c"), q=0.01)
    assert one["median_position"].item() == 0 and one["mean_relative_position"].item() == 0
    with pytest.raises(SampleEffectError, match="q"):
        rare_token_positions(read_replay(tmp_path), q=1.5)


@pytest.mark.parametrize(("content", "needle"), [
    ('{"step": 1, "logprobs": [-1.0]}\nnot json\n', "step-00001.jsonl:2: malformed JSON"),
    ('{"step": 1, "completion": "x"}\n', "step-00001.jsonl:1: missing field 'logprobs'"),
    ('{"step": "1", "logprobs": [-1.0]}\n', "step-00001.jsonl:1: field 'step' must be an integer"),
    ('{"step": 1, "logprobs": -1.0}\n', "step-00001.jsonl:1: field 'logprobs' must be a list"),
    ('{"step": 1, "logprobs": [-1.0]}\n{"step": 1, "logprobs": [-1.0, NaN]}\n', "step-00001.jsonl:2: logprobs[1] must be a finite number"),
    ('[1, 2]\n', "step-00001.jsonl:1: expected a JSON object"),
])
def test_bad_replay_lines_name_file_and_line(tmp_path, content, needle):
    (tmp_path / "replay").mkdir()
    (tmp_path / "replay" / "step-00001.jsonl").write_text(content)
    with pytest.raises(SampleEffectError, match=needle.replace("[", r"\[").replace("]", r"\]")):
        read_replay(tmp_path)


def test_missing_or_empty_replay(tmp_path):
    with pytest.raises(SampleEffectError, match="replay directory not found"):
        read_replay(tmp_path / "nope")
    (tmp_path / "replay").mkdir()
    with pytest.raises(SampleEffectError, match=r"no step-\*\.jsonl files in"):
        read_replay(tmp_path)
    (tmp_path / "replay" / "step-00001.jsonl").write_text("")
    with pytest.raises(SampleEffectError, match=r"step-00001\.jsonl: empty replay file"):
        read_replay(tmp_path)


def test_real_grpo_replay_has_the_hand_written_format(model_dirs, tmp_path, capsys):
    """A 2-step `train-grpo` on the tiny float64 model: its replay has the keys the hand-made one has,
    one log-prob per completion token, and `plot quantiles` draws it."""
    rl = write_jsonl(tmp_path / "rl.jsonl", [{"id": f"p{i}", "prompt": r["prompt"], "answer": "x"} for i, r in enumerate(TRAIN)])
    run_dir = tmp_path / "g"
    code, _, err = run(["train-grpo", "--model", model_dirs["gpt2"], "--dtype", "float64", "--prompts", rl, "--out", run_dir,
                        "--steps", "2", "--prompts-per-step", "2", "--group-size", "3", "--max-new-tokens", "6", "--quiet"], capsys)
    assert code == 0, err
    real = [json.loads(x) for f in sorted((run_dir / "replay").glob("step-*.jsonl")) for x in f.read_text().splitlines()]
    assert len(real) == 2 * 2 * 3 and {r["step"] for r in real} == {1, 2}
    assert set(real[0]) == set(replay_line(1, 0, [-1.0]))
    for r in real:
        assert all(isinstance(v, float) and v <= 0 for v in r["logprobs"]) and 1 <= len(r["logprobs"]) <= 6
    tokens = read_replay(run_dir)
    assert len(tokens) == sum(len(r["logprobs"]) for r in real)
    table, _ = logprob_quantiles(run_dir, q=0.2, min_count=1)
    step1 = [r["logprobs"] for r in real if r["step"] == 1]
    want = expected(step1, 0.2, 1, 1)
    got = table[table["step"] == 1].set_index("position")
    for p, (v, n) in want.items():
        assert got.loc[p, "count"] == n and got.loc[p, "quantile"] == pytest.approx(v, rel=1e-12)

    fig = tmp_path / "q.png"
    code, out, err = run(["plot", "quantiles", run_dir, "--out", fig, "--quantile", "0.2", "--min-count", "1"], capsys)
    assert code == 0, err
    assert is_png(fig) and str(tmp_path / "q.csv") in out
    back = pd.read_csv(tmp_path / "q.csv")
    assert list(back.columns) == ["step", "position", "quantile", "count"]
    np.testing.assert_allclose(back["quantile"], table["quantile"], rtol=1e-9)


# --------------------------------------------------------------------------------------------
# Every KIND from synthetic inputs in the producing commands' formats
# --------------------------------------------------------------------------------------------


@pytest.fixture
def inputs(tmp_path) -> dict[str, Path]:
    d = tmp_path / "in"
    d.mkdir()
    rng = np.random.default_rng(1)
    f: dict[str, Path] = {}
    ids = [f"pool-{s}-{i:03d}" for s in ("answer-only", "short-cot", "long-cot") for i in range(5)]
    eff = rng.normal(size=len(ids))
    rank = pd.DataFrame({"id": ids, "effect": eff, "loss": rng.uniform(1, 3, len(ids)), "n_tokens": 10, "n_responses": 1,
                         "grad_norm": 1.0, "flag": ""})
    rank.loc[3, ["effect", "flag"]] = [np.nan, "nonfinite"]  # as `rank` writes a non-finite effect
    rank["rank"] = rank["effect"].rank(ascending=False, method="first", na_option="bottom").astype(int)
    rank = rank.sort_values("rank")[["id", "rank", "effect", "loss", "n_tokens", "n_responses", "grad_norm", "flag"]]
    rank.to_csv(d / "rank.csv", index=False)
    rank.to_parquet(d / "rank.parquet", index=False)
    f["rank"], f["rank_parquet"] = d / "rank.csv", d / "rank.parquet"

    lin = d / "lin"
    lin.mkdir()
    lrs = [1e-6, 1e-5, 1e-4]
    rows = [{"lr": lr, "id": i, "effect": e, "predicted": lr * e, "actual": lr * e * (1 + 0.1 * lr * 1e4)}
            for lr in lrs for i, e in zip(ids[:5], eff[:5])]
    pd.DataFrame(rows).to_csv(lin / "linearization.csv", index=False, float_format="%.10g")
    summary = [{"lr": lr, "pearson": 0.99, "spearman": 1.0, "n": 5, "mean_abs_rel_error": 0.01} for lr in lrs]
    (lin / "linearization.json").write_text(json.dumps({"optimizer": "sgd", "clip": None, "summary": summary}))
    f["lin"] = lin

    steps = np.arange(1, 7)
    sft = []
    for name, scale in (("a", 1.0), ("b", 0.5)):
        pos, noise = 0.1 * scale * np.ones(6), -0.01 * np.ones(6)
        cum = np.cumsum(pos + noise)
        sft.append(pd.DataFrame({"dataset": name, "step": steps, "lr": 1e-4, "positive": pos, "noise": noise, "noise_se": 0.001,
                                 "seed_path": pos, "predicted": pos + noise, "cumulative": cum, "target": 2.0 - cum}))
    pd.concat(sft).to_csv(d / "pred.csv", index=False)
    f["predict_sft"] = d / "pred.csv"

    curves = [{"dataset": n, "step": s, "actual": 2 - 0.1 * s, "predicted": 2 - 0.09 * s, "predicted_seed_path": 2 - 0.095 * s}
              for n in ("a", "b") for s in (0, 2, 4, 6)]
    pd.DataFrame(curves).to_csv(d / "curves.csv", index=False)
    f["curves"] = d / "curves.csv"

    sel = [{"selection": s, "group": s.split("-")[0], "mean_effect": m, "target_loss_start": 2.0, "target_loss_end": 2 - m,
            "accuracy_start": 0.1, "accuracy_end": 0.1 + m / 10}
           for s, m in (("top-4", 0.5), ("random-4 (seed 0)", 0.2), ("random-4 (seed 1)", 0.25), ("bottom-4", -0.1))]
    pd.DataFrame(sel).to_csv(d / "sel.csv", index=False)
    f["selection"] = d / "sel.csv"

    rec = {"target": "loss", "n_prompts": 8, "zero_variance_groups": 7, "zero_variance_fraction": 0.875,
           "positive_effect": 3.7e-4, "positive_effect_ci95": [0.0, 6.9e-4], "noise_effect": None,
           "growth_rate": 3.7e-4, "growth_rate_ci95": [0.0, 6.9e-4], "lr": 1e-3}
    recs = [{"model": "tiny", **rec}, {"model": "runs/grpo2/final", **rec, "zero_variance_groups": 8,
                                       "zero_variance_fraction": 1.0, "growth_rate": 0.0, "growth_rate_ci95": [0.0, 0.0]}]
    (d / "rl.json").write_text(json.dumps(recs, indent=2) + "\n")
    f["predict_rl"] = d / "rl.json"

    for name in ("run1", "run2"):
        (d / name).mkdir()
        pd.DataFrame({"step": [0, 2, 4], "epoch": [0, 1, 2], "lr": 1e-4, "train_loss": [np.nan, 2.0, 1.5],
                      "eval_loss": [2.5, 2.1, 1.8], "elapsed_s": [0.1, 0.2, 0.3]}).to_csv(d / name / "metrics.csv", index=False)
    f["run1"], f["run2"] = d / "run1", d / "run2"
    hand_replay(d / "grpo", {s: [3, 5, 8, 8, 2, 6] for s in range(1, 5)})
    f["grpo"] = d / "grpo"
    return f


KINDS = [
    ("effects", ["rank"], []),
    ("effects", ["rank"], ["--group-by", "^pool-(answer-only|short-cot|long-cot)-"]),
    ("effects", ["rank_parquet"], ["--group-by", "^pool-([a-z-]+)-\\d+$"]),
    ("linearization", ["lin"], []),
    ("predict-sft", ["predict_sft"], []),
    ("curves", ["curves"], []),
    ("selection", ["selection"], []),
    ("predict-rl", ["predict_rl"], []),
    ("quantiles", ["grpo"], ["--bucket", "2", "--min-count", "3"]),
    ("quantile-curves", ["grpo"], ["--steps", "1,4", "--min-count", "3"]),
    ("quantile-curves", ["grpo"], ["--min-count", "3"]),
    ("training", ["run1", "run2"], ["--y", "eval_loss"]),
]


@pytest.mark.parametrize(("kind", "ins", "extra"), KINDS, ids=[f"{k}-{i}" for i, (k, _, _) in enumerate(KINDS)])
def test_every_kind_draws_png_and_svg(inputs, tmp_path, capsys, kind, ins, extra):
    png, svg = tmp_path / "fig.png", tmp_path / "other.svg"
    code, out, err = run(["plot", kind, *[inputs[i] for i in ins], "--out", png, *extra], capsys)
    assert code == 0, err
    assert is_png(png) and f"wrote {png}" in out
    # --svg on a suffix-less --out writes FILE.svg; an existing figure is kept without --overwrite
    code, _, err = run(["plot", kind, *[inputs[i] for i in ins], "--out", tmp_path / "other", "--svg", *extra], capsys)
    assert code == 0, err
    assert is_svg(svg)
    before = png.read_bytes()
    assert_error(["plot", kind, *[inputs[i] for i in ins], "--out", png, *extra], capsys, "already exists", [])
    assert png.read_bytes() == before
    assert run(["plot", kind, *[inputs[i] for i in ins], "--out", png, "--overwrite", *extra], capsys)[0] == 0
    if kind.startswith("quantile"):
        table = pd.read_csv(tmp_path / "fig.csv")
        assert list(table.columns) == ["step", "position", "quantile", "count"]
        rare = pd.read_csv(tmp_path / "fig_rare.csv")
        assert list(rare.columns) == ["step", "tokens", "threshold", "rare", "median_position", "mean_relative_position"]
        assert rare["step"].tolist() == sorted(set(table["step"])) and "the rarest 0.01 of tokens" in out


# --------------------------------------------------------------------------------------------
# Errors: exit 2, one line, no output
# --------------------------------------------------------------------------------------------


def test_plot_errors(inputs, tmp_path, capsys):
    out = tmp_path / "o.png"
    bad = tmp_path / "bad.csv"
    bad.write_text("id,score\na,1\n")
    cases = [
        (["effects", tmp_path / "missing.csv"], "rank table not found"),
        (["effects", bad], "missing column(s) rank, effect of a rank table"),
        (["effects", inputs["rank"], "--group-by", "^pool-"], "needs exactly one capture group"),
        (["effects", inputs["rank"], "--group-by", "^zzz-(a)"], "matches none of the 15 ids"),
        (["effects", inputs["rank"], "--group-by", "(["], "--group-by is not a valid regex"),
        (["linearization", tmp_path], "no linearization.csv in"),
        (["predict-sft", inputs["curves"]], "missing column(s) positive, cumulative, target"),
        (["curves", inputs["predict_sft"]], "missing column(s) actual"),
        (["selection", inputs["rank"]], "missing column(s) selection, group, target_loss_end"),
        (["predict-rl", inputs["rank"]], "must be a .json file"),
        (["quantiles", tmp_path / "nothing"], "replay directory not found"),
        (["quantiles", inputs["grpo"], "--quantile", "1.5"], "--quantile must be in [0, 1]"),
        (["quantile-curves", inputs["grpo"], "--steps", "9"], "--steps 9 not in the replay"),
        (["quantiles", inputs["grpo"], "--min-count", "100"], "no (step, position) cell holds --min-count 100 tokens"),
        (["training", inputs["run1"], "--y", "reward_mean"], "missing column(s) reward_mean of a metrics table"),
        (["training", tmp_path], "no metrics.csv in"),
    ]
    for argv, needle in cases:
        assert_error(["plot", *argv, "--out", out], capsys, needle, [out, out.with_suffix(".csv")])
    (tmp_path / "rl.json").write_text(json.dumps([{"model": "tiny", "growth_rate": 1.0}]))
    assert_error(["plot", "predict-rl", tmp_path / "rl.json", "--out", out], capsys,
                 "record 1 lacks growth_rate_ci95, zero_variance_fraction", [out])
    (tmp_path / "rl.json").write_text("[{")
    assert_error(["plot", "predict-rl", tmp_path / "rl.json", "--out", out], capsys, "rl.json:1: malformed JSON", [out])
    assert_error(["plot", "curves", inputs["curves"], "--out", tmp_path / "o.pdf"], capsys, "--out must end in .png or .svg", [])
    assert_error(["plot", "curves", inputs["curves"], "--out", out, "--svg"], capsys, "--svg writes SVG", [out])
    assert_error(["plot", "curves", inputs["curves"], "--out", tmp_path / "no" / "o.png"], capsys, "output directory does not exist", [])
    # the quantile table next to the figure is checked before anything is drawn
    (tmp_path / "o.csv").write_text("keep")
    assert_error(["plot", "quantiles", inputs["grpo"], "--out", out], capsys, "output file already exists: " + str(tmp_path / "o.csv"), [out])
    assert (tmp_path / "o.csv").read_text() == "keep"


@pytest.mark.parametrize("kind", [[], ["effects"], ["predict-rl"], ["quantiles"], ["quantile-curves"], ["training"]])
def test_help_renders(kind, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["plot", *kind, "--help"])
    assert exc.value.code == 0
    assert "usage: sample-effect plot" in capsys.readouterr().out
