"""`validate rl-starts`: which SFT start does GRPO improve fastest, judged with error bars on both sides.

For every start: every predictor of `rl_predictors` from one set of samples at the start's
weights, then R real GRPO runs measured at their early steps (`rl_measure`), one slope per run.
Then, per measurement and predictor, `rl_verdict.judge_predictor`: Spearman across starts with a
bootstrap interval over runs and prompts, and the pairs that are resolved (the measured gap beyond
1.96 SE and the predictor's intervals apart), agreeing, or tied.

Everything slow is cached under OUT/cache: each start's predictions and each finished run, keyed by
the settings they depend on, so a stopped comparison resumes and a new start or measurement adds
only its own work.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from sample_effect.errors import SampleEffectError
from sample_effect.io import atomic_open, write_table
from sample_effect.rollouts.prompts import RLPrompt
from sample_effect.training.grpo import GRPOConfig
from sample_effect.validation.rl_measure import GrowthProbe, file_slug, measure_runs, run_slopes
from sample_effect.validation.rl_predictors import PredictSettings, as_records, predict_start
from sample_effect.validation.rl_verdict import judge_predictor, run_summary, verdict_markdown

Loader = Callable[[], tuple[Any, Any]]


@dataclass
class RLStartsConfig:
    """How many runs per start, the predictions' sampling settings and the bootstrap size."""

    runs: int = 4
    predict: PredictSettings = field(default_factory=PredictSettings)
    n_boot: int = 2000
    dtype: str = "float32"

    def validate(self) -> RLStartsConfig:
        """Raise SampleEffectError on an out-of-range setting; return self."""
        if self.runs < 2:
            raise SampleEffectError(f"runs must be >= 2 (a growth rate needs an error bar), got {self.runs}")
        if self.predict.target_samples < 2:
            raise SampleEffectError(f"target samples must be >= 2 (leave-one-out baseline), got {self.predict.target_samples}")
        if self.n_boot < 100:
            raise SampleEffectError(f"n_boot must be >= 100, got {self.n_boot}")
        return self


def _key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def start_predictions(name: str, path: str, load: Loader, prompts: Sequence[RLPrompt], cfg: GRPOConfig,
                      probe: GrowthProbe, config: RLStartsConfig, cache: Path) -> list[dict[str, Any]]:
    """One start's predictor records, from CACHE/predict-NAME-KEY.json when a previous run made them."""
    key = _key(path, asdict(cfg), asdict(config.predict), probe.key(), [p.id for p in prompts])
    f = cache / f"predict-{file_slug(name)}-{key}.json"
    if f.exists():
        return json.loads(f.read_text())
    t0 = time.perf_counter()
    model, tok = load()
    records = as_records(predict_start(model, tok, prompts, cfg, probe, config.predict))
    for r in records:
        r["detail"]["seconds_all_predictors"] = time.perf_counter() - t0
    with atomic_open(f) as fh:
        json.dump(records, fh, indent=1)
    return records


def compare_starts(
    starts: Mapping[str, tuple[str, Loader]],
    prompts: Sequence[RLPrompt],
    cfg: GRPOConfig,
    probe: GrowthProbe,
    config: RLStartsConfig,
    out_dir: str | os.PathLike,
    say: Callable[[str], None] | None = None,
) -> tuple[dict[str, Any], pd.DataFrame]:
    """Predict, run, judge; returns (the `rl_starts.json` record, the measured rows).

    `starts` maps a start's name to (its path, shown in the record; a loader returning a fresh
    (model, tokenizer) of it at each call).
    """
    config, probe = config.validate(), probe.validate()
    if len(starts) < 2:
        raise SampleEffectError("validate rl-starts needs at least two starts (--model given twice or more)")
    cache = Path(out_dir) / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    predictions, frames = {}, []
    for name, (path, load) in starts.items():
        if say:
            say(f"{name}: predictors (sample-effect, look-ahead, baselines)")
        t1 = time.perf_counter()
        predictions[name] = start_predictions(name, path, load, prompts, cfg, probe, config, cache)
        if say:
            say(f"{name}: {config.runs} GRPO runs of {cfg.steps} steps ({time.perf_counter() - t1:.0f} s so far)")
        frames.append(measure_runs(name, load, prompts, cfg, config.runs, probe, cache))
    rows = pd.concat(frames, ignore_index=True)
    slopes = run_slopes(rows)
    names = list(starts)
    doc_starts = []
    for name in names:
        measured = {}
        for m in probe.measurements:
            runs = slopes[(slopes["start"] == name) & (slopes["measurement"] == m)]["slope"].tolist()
            mean, se = run_summary(runs)
            measured[m] = {"mean": mean, "se": se, "runs": runs}
        doc_starts.append({"name": name, "path": starts[name][0], "measured": measured,
                           "predictors": {r["name"]: r for r in predictions[name]}})
    by_measurement: dict[str, dict[str, Any]] = {}
    common = [r["name"] for r in predictions[names[0]] if all(r["name"] in {x["name"] for x in predictions[n]} for n in names)]
    for m in probe.measurements:
        runs = [s["measured"][m]["runs"] for s in doc_starts]
        by_measurement[m] = {
            p: judge_predictor(names, [s["predictors"][p]["value"] for s in doc_starts],
                               [s["predictors"][p]["se"] for s in doc_starts], runs, config.n_boot)
            for p in _ordered(common, m)
        }
    primary = probe.measurements[0]
    doc = {
        "measurement": primary, "measurements": list(probe.measurements), "runs": config.runs, "steps": cfg.steps,
        "predictors": by_measurement[primary], "by_measurement": by_measurement, "starts": doc_starts,
        "config": {"grpo": asdict(cfg), "predict": asdict(config.predict), "probe": probe.key(), "n_boot": config.n_boot,
                   "n_prompts": len(prompts)},
        "seconds": time.perf_counter() - t0,
    }
    return doc, rows


def _ordered(names: Sequence[str], measurement: str) -> list[str]:
    """The measurement's own sample-effect and look-ahead predictors first, then the other ones, then baselines."""
    own = [n for n in names if n.endswith(f" {measurement}") and not n.startswith(("greedy", "sampled"))]
    rest = [n for n in names if n not in own]
    return own + rest


def write_outputs(doc: Mapping[str, Any], rows: pd.DataFrame, out_dir: str | os.PathLike) -> list[Path]:
    """OUT/rl_starts.json, rl_starts.md (the verdict), rl_starts_runs.csv and one figure per measurement."""
    from sample_effect.plots.rl import rl_starts_panels

    out = Path(out_dir)
    files = [out / "rl_starts.json", out / "rl_starts.md", out / "rl_starts_runs.csv"]
    with atomic_open(files[0]) as f:
        json.dump(doc, f, indent=1, default=str)
    md = verdict_markdown(doc["by_measurement"], [s["name"] for s in doc["starts"]], doc["runs"])
    with atomic_open(files[1]) as f:
        f.write(md)
    write_table(rows, files[2])
    for m in doc["measurements"]:
        png = out / f"rl_starts_{m}.png"
        rl_starts_panels(doc, m, png)
        files.append(png)
    return files


def probe_for(measurements: Sequence[str], eval_prompts: Sequence[RLPrompt], reward: Callable[..., float],
              cfg: GRPOConfig, **kw: Any) -> GrowthProbe:
    """A `GrowthProbe` sampling at the trainer's temperature and length."""
    return GrowthProbe(tuple(measurements), eval_prompts, reward, cfg.temperature, cfg.max_new_tokens, **kw)
