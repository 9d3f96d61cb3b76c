"""`sample-effect plot KIND INPUT... --out FILE`: re-draw a figure from saved results, no model needed.

Every KIND reads the files another command wrote (`rank`, `validate ...`, `predict-sft`,
`predict-rl`, `train-sft` / `train-grpo`) and draws the figure; inputs are checked and a bad one
is a one-line SampleEffectError naming the file and what is wrong with it.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sample_effect.cli.options import SubParsers, add_common_args, positive_int
from sample_effect.errors import SampleEffectError

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger("sample_effect")

FIGURE_SUFFIXES = (".png", ".svg")


def _steps_arg(text: str) -> list[int]:
    try:
        steps = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated step numbers, got '{text}'") from None
    if not steps:
        raise argparse.ArgumentTypeError("expected at least one step")
    return steps


def add_parsers(sub: SubParsers) -> None:
    """Register `plot` and its kinds."""
    top = sub.add_parser(
        "plot", help="re-draw a figure from saved results (rank tables, validate/predict outputs, GRPO replays, metrics)",
        description="Re-draw a figure from files other commands wrote; no model is loaded. PNG by default, SVG when "
        "--out ends in .svg or with --svg.",
    )
    kinds = top.add_subparsers(dest="kind", required=True, metavar="KIND")

    def kind(name: str, help_: str, inputs: str, many: bool = False, title: bool = True) -> argparse.ArgumentParser:
        p = kinds.add_parser(name, help=help_.replace("%", "%%"), description=help_)
        p.add_argument("inputs", nargs="+" if many else 1, metavar="INPUT", help=inputs)
        p.add_argument("--out", required=True, help="figure to write, .png (default) or .svg")
        p.add_argument("--svg", action="store_true", help="write SVG (--out without a suffix gets .svg)")
        if title:
            p.add_argument("--title", default=None, help="figure title (default: a descriptive one)")
        add_common_args(p)
        p.set_defaults(func=cmd_plot, plot_kind=name)
        return p

    p = kind("effects", "sample effects from a `rank` table: ranked curve and histogram, or per group with --group-by",
             "the table `rank --out` wrote (.csv or .parquet)")
    p.add_argument("--group-by", metavar="REGEX",
                   help="a regex with one capture group applied to `id`; its match is the example's group, "
                   "e.g. '^pool-(answer-only|short-cot|long-cot)-'")
    kind("linearization", "predicted vs actual one-step drops, one panel per lr (`validate linearization`)",
         "the directory `validate linearization --out` wrote (or its linearization.csv)", title=False)
    kind("predict-sft", "predicted cumulative change of the target per dataset (`predict-sft`)",
         "the CSV `predict-sft --out X.json` wrote next to it (X.csv)")
    kind("curves", "predicted vs actual target loss per dataset (`validate curves`) or checkpoint (`validate rl-curves`)",
         "the CSV `validate curves` or `validate rl-curves --out X.json` wrote next to it (X.csv)", title=False)
    kind("selection", "top-k vs random-k vs bottom-k final target loss (`validate selection`)",
         "the CSV `validate selection --out X.json` wrote next to it (X.csv)", title=False)
    kind("predict-rl", "predicted growth per GRPO step per model with its bootstrap 95% interval (`predict-rl`)",
         "the JSON `predict-rl --out` wrote")
    for name, what in (("quantiles", "heatmap of the q-quantile of token log-probs per GRPO step and token position"),
                       ("quantile-curves", "q-quantile of token log-probs against token position, a few GRPO steps")):
        p = kind(name, what + "; the tidy table (step, position, quantile, count) goes to OUT with a .csv suffix, "
                 "and where each step's rarest q of tokens sit (median and relative position) to OUT_rare.csv",
                 "a `train-grpo --out` run directory, its replay/ directory or one replay/step-XXXXX.jsonl")
        p.add_argument("--quantile", type=float, default=0.01, help="the quantile q in [0, 1] (default 0.01)")
        p.add_argument("--bucket", type=positive_int, default=1, help="pool this many token positions per column (default 1)")
        p.add_argument("--min-count", type=positive_int, default=5, help="fewer tokens than this in a cell: no value (default 5)")
        if name == "quantile-curves":
            p.add_argument("--steps", type=_steps_arg, default=None, metavar="S1,S2,...",
                           help="which GRPO steps to draw (default: up to 4 from the first to the last)")
    p = kind("training", "a metric against step for one or more train-sft / train-grpo runs",
             "metrics.csv files (or the run directories holding them)", many=True)
    p.add_argument("--y", default="eval_loss", help="metric column to plot (default eval_loss; e.g. reward_mean, train_loss)")
    p.add_argument("--x", default="step", help="column on the x axis (default step)")


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------


def _input_file(path: str | Path, what: str, suffixes: Iterable[str]) -> Path:
    p = Path(path)
    suffixes = tuple(suffixes)
    if not p.exists():
        raise SampleEffectError(f"{what} not found: {p}")
    if p.is_dir():
        raise SampleEffectError(f"{what} is a directory, expected a {' or '.join(suffixes)} file: {p}")
    if p.suffix.lower() not in suffixes:
        raise SampleEffectError(f"{what} must be a {' or '.join(suffixes)} file, got '{p.name}'")
    return p


def read_table(path: str | Path, what: str, required: Iterable[str], suffixes: Iterable[str] = (".csv",)) -> pd.DataFrame:
    """A CSV (or Parquet) table holding the `required` columns and at least one row."""
    import pandas as pd

    p = _input_file(path, what, suffixes)
    try:
        if p.suffix.lower() == ".parquet":
            try:
                df = pd.read_parquet(p)
            except ImportError:
                raise SampleEffectError("reading .parquet needs pyarrow: pip install 'sample-effect[parquet]'") from None
        else:
            df = pd.read_csv(p)
    except SampleEffectError:
        raise
    except pd.errors.EmptyDataError:
        raise SampleEffectError(f"{p}: empty file, expected a {what} with columns {', '.join(required)}") from None
    except UnicodeDecodeError as exc:
        raise SampleEffectError(f"{p}: not valid UTF-8 ({exc.reason}); expected a {what}") from None
    except Exception as exc:
        raise SampleEffectError(f"{p}: cannot be read as a {what} ({type(exc).__name__}: {exc})") from None
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise SampleEffectError(
            f"{p}: missing column(s) {', '.join(missing)} of a {what} (found: {', '.join(map(str, df.columns)) or 'none'})"
        )
    if df.empty:
        raise SampleEffectError(f"{p}: the {what} has no rows")
    return df


def _numeric(df: pd.DataFrame, columns: Iterable[str], path: str | Path) -> pd.DataFrame:
    import pandas as pd

    for c in columns:
        if c in df and not pd.api.types.is_numeric_dtype(df[c]):
            conv = pd.to_numeric(df[c], errors="coerce")
            bad = df[c][conv.isna() & df[c].notna()]
            if len(bad):
                raise SampleEffectError(f"{path}: column '{c}' must be numeric, found {bad.iloc[0]!r} in row {bad.index[0] + 1}")
            df[c] = conv
    return df


# ---------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------


def _figure_path(args: argparse.Namespace) -> Path:
    out = Path(args.out)
    suffix = out.suffix.lower()
    if suffix == "":
        out = out.with_name(out.name + (".svg" if args.svg else ".png"))
    elif suffix not in FIGURE_SUFFIXES:
        raise SampleEffectError(f"--out must end in .png or .svg, got '{out.name}'")
    elif args.svg and suffix != ".svg":
        raise SampleEffectError(f"--svg writes SVG but --out ends in {out.suffix}; use --out {out.with_suffix('.svg')}")
    return out


def cmd_plot(args: argparse.Namespace) -> None:
    """Check the outputs, read and check the inputs, draw."""
    from sample_effect.io import check_output_path

    out = _figure_path(args)
    outputs = [out]
    if args.plot_kind in ("quantiles", "quantile-curves"):
        outputs += [out.with_suffix(".csv"), out.with_name(out.stem + "_rare.csv")]
    for p in outputs:
        check_output_path(p, args.overwrite)
    inputs = args.inputs
    if args.plot_kind != "training" and len(inputs) != 1:  # pragma: no cover - argparse takes exactly one
        raise SampleEffectError(f"plot {args.plot_kind} takes one INPUT, got {len(inputs)}")
    extra = DRAW[args.plot_kind](args, out)
    print(f"wrote {', '.join(str(p) for p in outputs)}" + (f" ({extra})" if extra else ""))


def _title(args: argparse.Namespace, default: str | None = None) -> Any:
    t = getattr(args, "title", None)
    return t if t else default


def _draw_effects(args: argparse.Namespace, out: Path) -> str:
    import numpy as np

    from sample_effect.plots.figures import effects_by_group, effects_ranked

    path = args.inputs[0]
    df = read_table(path, "rank table", ("id", "rank", "effect"), (".csv", ".parquet"))
    df = _numeric(df, ("rank", "effect"), path)
    df["id"] = df["id"].astype(str)
    if args.group_by is None:
        effects_ranked(df, out, **({"title": args.title} if args.title else {}))
        return f"{len(df)} examples"
    try:
        rx = re.compile(args.group_by)
    except re.error as exc:
        raise SampleEffectError(f"--group-by is not a valid regex: {exc}") from None
    if rx.groups != 1:
        raise SampleEffectError(f"--group-by needs exactly one capture group (...), '{args.group_by}' has {rx.groups}")
    groups = df["id"].map(lambda s: (lambda m: m.group(1) if m and m.group(1) is not None else None)(rx.search(s)))
    unmatched = groups.isna()
    if unmatched.all():
        raise SampleEffectError(f"--group-by '{args.group_by}' matches none of the {len(df)} ids in {path} (e.g. '{df['id'].iloc[0]}')")
    if unmatched.any():
        log.warning("--group-by '%s' does not match %d of %d ids (e.g. '%s'); they are left out of the figure",
                    args.group_by, int(unmatched.sum()), len(df), df.loc[unmatched, "id"].iloc[0])
    df = df.assign(group=groups)[~unmatched]
    finite = np.isfinite(df["effect"].to_numpy(float))
    if not finite.all():
        log.warning("%d example(s) with a non-finite effect left out of the figure", int((~finite).sum()))
        df = df[finite]
        if df.empty:
            raise SampleEffectError(f"{path}: no example in the groups has a finite effect")
    effects_by_group(df, "group", out, title=_title(args, f"Sample effect by group ({len(df)} examples)"))
    return f"{df['group'].nunique()} groups, {len(df)} examples"


def _draw_linearization(args: argparse.Namespace, out: Path) -> str:
    import numpy as np

    from sample_effect.validation.linearization import LinearizationResult, plot_linearization

    p = Path(args.inputs[0])
    if not p.exists():
        raise SampleEffectError(f"linearization directory not found: {p}")
    d = p if p.is_dir() else p.parent
    csv = d / "linearization.csv"
    if not csv.is_file():
        raise SampleEffectError(f"no linearization.csv in {d} (expected the directory `validate linearization --out` wrote)")
    rows = _numeric(read_table(csv, "linearization table", ("lr", "id", "effect", "predicted", "actual")),
                    ("lr", "effect", "predicted", "actual"), csv)
    summary = _linearization_summary(d / "linearization.json", rows)
    # snap the rows' lr (written with 10 significant digits) onto the summary's exact values
    lrs = summary["lr"].to_numpy(float)
    idx = np.abs(rows["lr"].to_numpy(float)[:, None] - lrs[None, :]).argmin(1)
    ok = np.isclose(rows["lr"].to_numpy(float), lrs[idx], rtol=1e-8, atol=0)
    if not ok.all():
        raise SampleEffectError(f"{csv}: lr {rows['lr'][~ok].iloc[0]} is not in linearization.json's summary")
    rows["lr"] = lrs[idx]
    plot_linearization(LinearizationResult(rows, summary), str(out))
    return f"{len(lrs)} learning rates, {rows['id'].nunique()} examples"


def _linearization_summary(path: Path, rows: pd.DataFrame) -> pd.DataFrame:
    """The per-lr summary from linearization.json, or recomputed from the rows when the JSON is absent."""
    import pandas as pd

    if path.exists():
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            summary = pd.DataFrame(doc["summary"])
            summary["lr"] = summary["lr"].astype(float)
            summary["pearson"] = summary["pearson"].astype(float)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise SampleEffectError(f"{path}: not a `validate linearization` summary ({type(exc).__name__}: {exc})") from None
        if summary.empty:
            raise SampleEffectError(f"{path}: the summary lists no learning rates")
        return summary
    from scipy.stats import pearsonr, spearmanr

    out = []
    for lr, g in rows.groupby("lr", sort=True):
        r = pearsonr(g["predicted"], g["actual"])[0] if len(g) >= 2 else float("nan")
        s = spearmanr(g["predicted"], g["actual"])[0] if len(g) >= 2 else float("nan")
        out.append({"lr": float(lr), "pearson": float(r), "spearman": float(s), "n": len(g)})
    return pd.DataFrame(out)


def _draw_predict_sft(args: argparse.Namespace, out: Path) -> str:
    from sample_effect.plots.figures import predicted_curves_table

    path = args.inputs[0]
    cols = ("dataset", "step", "positive", "cumulative", "target")
    df = _numeric(read_table(path, "predict-sft curve table", cols), cols[1:], path)
    predicted_curves_table(df, out, **({"title": args.title} if args.title else {}))
    return f"{df['dataset'].nunique()} dataset(s)"


def _draw_curves(args: argparse.Namespace, out: Path) -> str:
    from sample_effect.plots.figures import predicted_vs_actual

    path = args.inputs[0]
    head = read_table(path, "validate curves table", ("step", "actual", "predicted"))
    if "model" in head.columns and "dataset" not in head.columns:  # validate rl-curves: runs averaged per checkpoint
        df = _numeric(head, ("step", "actual", "predicted"), path)
        cols = [c for c in ("actual", "predicted", "predicted_second_order") if c in df and df[c].notna().any()]
        df = df.groupby(["model", "step"], sort=False)[cols].mean().reset_index()
        predicted_vs_actual(df.rename(columns={"model": "dataset"}), out, title="Predicted vs actual target loss during GRPO")
        return f"{df['model'].nunique()} checkpoint(s)"
    cols = ("dataset", "step", "actual", "predicted")
    df = _numeric(read_table(path, "validate curves table", cols), cols[1:], path)
    predicted_vs_actual(df, out)
    return f"{df['dataset'].nunique()} dataset(s)"


def _draw_selection(args: argparse.Namespace, out: Path) -> str:
    from sample_effect.plots.figures import selection_bars

    path = args.inputs[0]
    df = read_table(path, "validate selection table", ("selection", "group", "target_loss_end"))
    df = _numeric(df, ("target_loss_end", "accuracy_end"), path)
    selection_bars(df, out)
    return f"{len(df)} runs"


def _draw_predict_rl(args: argparse.Namespace, out: Path) -> str:
    from sample_effect.plots.figures import rl_growth_bars

    p = _input_file(args.inputs[0], "predict-rl JSON", (".json",))
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise SampleEffectError(f"{p}: not valid UTF-8 ({exc.reason})") from None
    except json.JSONDecodeError as exc:
        raise SampleEffectError(f"{p}:{exc.lineno}: malformed JSON ({exc.msg})") from None
    records = [doc] if isinstance(doc, dict) else doc
    if not isinstance(records, list) or not records:
        raise SampleEffectError(f"{p}: expected the list of per-model records `predict-rl --out` writes")
    need = ("model", "growth_rate", "growth_rate_ci95", "zero_variance_fraction")
    for i, r in enumerate(records):
        if not isinstance(r, dict):
            raise SampleEffectError(f"{p}: record {i + 1} is a {type(r).__name__}, expected an object")
        missing = [k for k in need if k not in r]
        if missing:
            raise SampleEffectError(f"{p}: record {i + 1} lacks {', '.join(missing)} (not a predict-rl output)")
        ci = r["growth_rate_ci95"]
        if ci is not None and not (isinstance(ci, list) and len(ci) == 2):
            raise SampleEffectError(f"{p}: record {i + 1}: growth_rate_ci95 must be a [low, high] pair, got {ci!r}")
        for k in ("growth_rate", "zero_variance_fraction"):
            v = r[k]
            if v is not None and (type(v) not in (int, float)):
                raise SampleEffectError(f"{p}: record {i + 1}: {k} must be a number, got {v!r}")
    rl_growth_bars(records, out, _title(args))
    return f"{len(records)} model(s)"


def _draw_quantiles(args: argparse.Namespace, out: Path) -> str:
    from sample_effect.analysis.quantiles import (
        check_settings,
        quantile_pivot,
        quantile_table,
        rare_token_positions,
        read_replay,
    )
    from sample_effect.io import write_table
    from sample_effect.plots.figures import logprob_quantile_curves, logprob_quantile_heatmap

    check_settings(args.quantile, args.min_count, args.bucket)  # bad settings fail before the replay is read
    tokens = read_replay(args.inputs[0])
    table = quantile_table(tokens, args.quantile, args.min_count, args.bucket)
    pivot = quantile_pivot(table, args.bucket)
    if table["quantile"].isna().all():
        raise SampleEffectError(f"{args.inputs[0]}: no (step, position) cell holds --min-count {args.min_count} tokens "
                                f"(the most is {int(table['count'].max())}); lower --min-count or raise --bucket")
    if args.plot_kind == "quantiles":
        logprob_quantile_heatmap(pivot, out, args.quantile, args.bucket, _title(args))
    else:
        have = set(table["step"])
        steps = args.steps
        if steps is not None:
            absent = [s for s in steps if s not in have]
            if absent:
                raise SampleEffectError(f"--steps {', '.join(map(str, absent))} not in the replay (it holds steps "
                                        f"{min(have)}..{max(have)})")
        logprob_quantile_curves(table, out, steps, args.quantile, _title(args))
    write_table(table, out.with_suffix(".csv"))
    rare = rare_token_positions(tokens, args.quantile)
    write_table(rare, out.with_name(out.stem + "_rare.csv"))
    first, last = rare.iloc[0], rare.iloc[-1]
    return (f"{pivot.shape[0]} steps x {pivot.shape[1]} positions; the rarest {args.quantile:g} of tokens sit at median "
            f"position {first['median_position']:g} (relative {first['mean_relative_position']:.2f}) at step "
            f"{int(first['step'])} and {last['median_position']:g} ({last['mean_relative_position']:.2f}) at step "
            f"{int(last['step'])}; per step in {out.stem}_rare.csv")


def _draw_training(args: argparse.Namespace, out: Path) -> str:
    from sample_effect.plots.figures import curves

    runs: dict[str, pd.DataFrame] = {}
    for item in args.inputs:
        p = Path(item)
        if p.is_dir():
            p = p / "metrics.csv"
            if not p.is_file():
                raise SampleEffectError(f"no metrics.csv in {item} (expected a train-sft / train-grpo --out directory)")
        df = _numeric(read_table(p, "metrics table", (args.x, args.y)), (args.x, args.y), p)
        if df[args.y].isna().all():
            raise SampleEffectError(f"{p}: column '{args.y}' holds no values")
        label = p.parent.name or str(p)
        if label in runs:
            label = str(p.parent)
        if label in runs:
            raise SampleEffectError(f"{item} is given twice")
        runs[label] = df
    curves(runs, args.x, args.y, out, _title(args, f"{args.y.replace('_', ' ')} during training"))
    return f"{len(runs)} run(s)"


DRAW: dict[str, Callable[[argparse.Namespace, Path], str]] = {
    "effects": _draw_effects,
    "linearization": _draw_linearization,
    "predict-sft": _draw_predict_sft,
    "curves": _draw_curves,
    "selection": _draw_selection,
    "predict-rl": _draw_predict_rl,
    "quantiles": _draw_quantiles,
    "quantile-curves": _draw_quantiles,
    "training": _draw_training,
}
