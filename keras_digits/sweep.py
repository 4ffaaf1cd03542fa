"""One-factor-at-a-time sweeps, and the run-grid runner and table/figure writer the studies share.

    python -m keras_digits.sweep --arch simple_cnn --dataset mnist --data-dir D \\
        --vary lr=0.001,0.01,0.1 --vary batch_size=16,32,64 --vary epochs=5,10,15,20 --seeds 3 \\
        [--out reports/sweep-NAME] [any keras_digits.train option]

The reports' method: start from one base configuration (the train defaults plus the options given)
and change one factor at a time, each setting trained with several seeds (base seed + i). Every run
is a normal `train_and_evaluate` run directory, OUT/runs/<factor>=<value>-s<seed>; a run whose
metrics.json exists is read back instead of retrained, so an interrupted sweep resumes (a run
directory holding a different configuration is an error, not silently reused). A setting that
equals another one of the grid (the base value of every factor is the base configuration) is
trained once and reported under each factor.

Writes OUT/sweep.md (per setting: seeds, mean ± sd of validation and test accuracy, test macro-F1,
epochs run, training seconds), OUT/sweep.csv (one row per run) and OUT/sweep.png (one panel per
factor: accuracy against value with ±1 sd error bars; log axis for learning rates). Selection is
by validation accuracy only (the best setting of each factor is marked in the table); test
accuracy is reported, never used to choose.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import re
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from keras_digits.cli import positive_int, run_cli
from keras_digits.config import TrainConfig
from keras_digits.errors import KerasDigitsError, TrainingDiverged
from keras_digits.report import pyplot as _pyplot
from keras_digits.io import check_output_dir, read_json_object, save_figure, write_text
from keras_digits.lock import hold
from keras_digits.rundir import is_diverged

COLUMNS = ("factor", "value", "seed", "status", "val_accuracy", "test_accuracy", "test_f1", "epochs_run",
           "train_seconds", "run_dir")


@dataclass(frozen=True)
class Variant:
    """One setting of a grid: `changes` to the base config, reported as (factor, value)."""

    factor: str
    value: str
    changes: Mapping[str, Any] = field(default_factory=dict)
    x: float | None = None  # numeric position on the factor's axis; None = categorical


@dataclass
class RunResult:
    """One finished (or read back) run of a grid."""

    variant: Variant
    seed: int
    run_dir: Path
    metrics: dict
    trained: bool


# ---------------------------------------------------------------------------- parsing --vary
def _field_kind(name: str) -> str:
    annotation = str(TrainConfig.__dataclass_fields__[name].type)
    for kind in ("bool", "int", "float", "Mapping", "str"):
        if kind in annotation:
            return kind
    return "str"


def parse_value(name: str, text: str) -> Any:
    """A --vary value typed like the TrainConfig field `name`."""
    text = text.strip()
    kind = _field_kind(name)
    if text.lower() == "none" and "None" in str(TrainConfig.__dataclass_fields__[name].type):
        return None
    try:
        if kind == "bool":
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if kind == "int":
            return int(text)
        if kind == "float":
            return float(text)
        if kind == "Mapping":
            value = json.loads(text)
            if not isinstance(value, dict):
                raise ValueError
            return value
    except ValueError:
        raise KerasDigitsError(f"--vary {name}: cannot read {text!r} as {kind}") from None
    return text


def parse_vary(items: Sequence[str]) -> list[Variant]:
    """--vary FIELD=V1,V2,... (repeatable) -> variants, in the order given."""
    variants: list[Variant] = []
    seen: set[str] = set()
    fields = TrainConfig.field_names()
    for item in items:
        name, eq, values = item.partition("=")
        name = name.strip().replace("-", "_")
        if not eq or not values.strip():
            raise KerasDigitsError(f"--vary expects FIELD=V1,V2,..., got {item!r}")
        if name not in fields or name in ("seed", "verbose", "model_kwargs"):
            allowed = sorted(fields - {"seed", "verbose", "model_kwargs"})
            raise KerasDigitsError(f"--vary: {name!r} is not a field one can vary; fields: {', '.join(allowed)}")
        if name in seen:
            raise KerasDigitsError(f"--vary {name} given twice")
        seen.add(name)
        for text in values.split(","):
            value = parse_value(name, text)
            x = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
            variants.append(Variant(name, text.strip(), {name: value}, x))
    return variants


# ---------------------------------------------------------------------------- running a grid
def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", str(text)).strip("_") or "x"


def run_dir_name(variant: Variant, seed: int) -> str:
    """<factor>=<value>-s<seed>, filesystem-safe."""
    return f"{_slug(variant.factor)}={_slug(variant.value)}-s{seed}"


def _comparable(cfg_dict: Mapping[str, Any]) -> dict:
    d = dict(cfg_dict)
    d.pop("verbose", None)
    return json.loads(json.dumps(d))  # tuples -> lists, as read back from config.json


def run_grid(
    base: TrainConfig,
    variants: Sequence[Variant],
    seeds: int,
    out: str | Path,
    *,
    transform_data: Callable | None = None,
    log: Callable[[str], None] = print,
) -> list[RunResult]:
    """Train every variant with `seeds` seeds (base.seed + i) into OUT/runs; resumable; see module doc."""
    from keras_digits.train import train_and_evaluate

    if seeds < 1:
        raise KerasDigitsError(f"--seeds must be at least 1, got {seeds}")
    out = Path(out)
    plan: list[tuple[Variant, int, TrainConfig]] = []
    for variant in variants:
        for i in range(seeds):
            try:
                cfg = base.replace(**dict(variant.changes), seed=base.seed + i)
            except TypeError as exc:
                raise KerasDigitsError(f"bad setting {variant.factor}={variant.value}: {exc}") from None
            plan.append((variant, base.seed + i, cfg))
    done: dict[str, RunResult] = {}  # config key -> first result (identical settings train once)
    results: list[RunResult] = []
    for n, (variant, seed, cfg) in enumerate(plan, 1):
        key = json.dumps(_comparable(cfg.to_dict()), sort_keys=True)
        label = f"[{n}/{len(plan)}] {variant.factor}={variant.value} seed {seed}"
        if key in done:
            first = done[key]
            results.append(RunResult(variant, seed, first.run_dir, first.metrics, False))
            log(f"{label}: same configuration as {first.run_dir.name}")
            continue
        run_dir = out / "runs" / run_dir_name(variant, seed)
        metrics_path = run_dir / "metrics.json"
        if metrics_path.is_file():
            old = read_json_object(run_dir / "config.json") if (run_dir / "config.json").is_file() else {}
            if _comparable(old) != _comparable(cfg.to_dict()):
                raise KerasDigitsError(f"{run_dir} holds a finished run with another configuration; "
                                       "use another --out or delete that run")
            metrics, trained = read_json_object(metrics_path), False
            log(f"{label}: done before, read back" + (" (diverged)" if is_diverged(metrics) else ""))
        else:
            start = time.perf_counter()
            try:
                metrics, trained = train_and_evaluate(cfg, run_dir, transform_data=transform_data), True
            except TrainingDiverged as exc:  # recorded in the run's metrics.json; the grid goes on
                metrics, trained = read_json_object(metrics_path), True
                log(f"{label}: {exc}")
            if not is_diverged(metrics):
                log(f"{label}: val {metrics['val']['accuracy']:.4f}"
                    + (f", test {metrics['test']['accuracy']:.4f}" if "test" in metrics else "")
                    + f" ({time.perf_counter() - start:.0f} s)")
        result = RunResult(variant, seed, run_dir, metrics, trained)
        done[key] = result
        results.append(result)
    return results


# ---------------------------------------------------------------------------- summarising
def _get(metrics: dict, split: str, key: str) -> float:
    value = (metrics.get(split) or {}).get(key)
    return float("nan") if value is None else float(value)


def result_rows(results: Sequence[RunResult]) -> list[dict[str, Any]]:
    """One flat row per run (the CSV)."""
    return [{
        "factor": r.variant.factor, "value": r.variant.value, "seed": r.seed,
        "status": r.metrics.get("status", "finished"),
        "val_accuracy": _get(r.metrics, "val", "accuracy"), "test_accuracy": _get(r.metrics, "test", "accuracy"),
        "test_f1": _get(r.metrics, "test", "f1"), "epochs_run": r.metrics.get("epochs_run", float("nan")),
        "train_seconds": r.metrics.get("train_seconds", float("nan")), "run_dir": r.run_dir.name,
    } for r in results]


def _mean_sd(values: Sequence[float]) -> tuple[float, float]:
    a = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    if a.size == 0:
        return float("nan"), float("nan")
    return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else float("nan")


def summarize(results: Sequence[RunResult]) -> list[dict[str, Any]]:
    """Per variant (in grid order): n seeds and mean/sd of each metric; `best` marks, per factor,
    the highest mean validation accuracy."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    variants: dict[tuple[str, str], Variant] = {}
    for r, row in zip(results, result_rows(results)):
        key = (r.variant.factor, r.variant.value)
        groups.setdefault(key, []).append(row)
        variants.setdefault(key, r.variant)
    summary = []
    for key, rows in groups.items():
        s: dict[str, Any] = {"factor": key[0], "value": key[1], "x": variants[key].x, "n": len(rows),
                             "diverged": sum(row["status"] == "diverged" for row in rows)}
        for metric in ("val_accuracy", "test_accuracy", "test_f1", "epochs_run", "train_seconds"):
            s[metric], s[f"{metric}_sd"] = _mean_sd([row[metric] for row in rows])
        summary.append(s)
    for factor in dict.fromkeys(s["factor"] for s in summary):
        mine = [s for s in summary if s["factor"] == factor and not math.isnan(s["val_accuracy"])]
        if len(mine) > 1:
            max(mine, key=lambda s: s["val_accuracy"])["best"] = True
    return summary


def _fmt(mean: float, sd: float, digits: int = 4) -> str:
    if math.isnan(mean):
        return "n/a"
    if math.isnan(sd):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {sd:.{digits}f}"


def markdown_table(summary: Sequence[dict[str, Any]]) -> str:
    """The study table: factor, value, seeds, val/test accuracy (mean ± sd), test macro-F1, epochs, seconds."""
    lines = ["| factor | value | seeds | val accuracy | test accuracy | test macro-F1 | epochs | train s |",
             "| --- | --- | ---: | --- | --- | --- | ---: | ---: |"]
    for s in summary:
        val = _fmt(s["val_accuracy"], s["val_accuracy_sd"])
        if s.get("best"):
            val = f"**{val}**"
        if s.get("diverged"):
            val = f"{val} (diverged: {s['diverged']} of {s['n']})"
        lines.append(f"| {s['factor']} | {s['value']} | {s['n']} | {val} | "
                     f"{_fmt(s['test_accuracy'], s['test_accuracy_sd'])} | {_fmt(s['test_f1'], s['test_f1_sd'])} | "
                     f"{_fmt(s['epochs_run'], float('nan'), 1)} | {_fmt(s['train_seconds'], float('nan'), 0)} |")
    return "\n".join(lines) + "\n"


def plot_summary(summary: Sequence[dict[str, Any]], path: str | Path, title: str = "") -> None:
    """One panel per factor: validation and test accuracy (mean ± sd) against the factor's values."""
    plt = _pyplot()
    factors = list(dict.fromkeys(s["factor"] for s in summary))
    fig, axes = plt.subplots(1, len(factors), figsize=(4.2 * len(factors) + 0.8, 3.8), squeeze=False)
    for ax, factor in zip(axes[0], factors):
        rows = [s for s in summary if s["factor"] == factor]
        numeric = all(s["x"] is not None for s in rows)
        xs = np.asarray([s["x"] for s in rows], dtype=float) if numeric else np.arange(len(rows), dtype=float)
        for offset, (metric, label, marker) in enumerate((("val_accuracy", "validation", "o"),
                                                           ("test_accuracy", "test", "s"))):
            means = np.asarray([s[metric] for s in rows], dtype=float)
            sds = np.nan_to_num(np.asarray([s[f"{metric}_sd"] for s in rows], dtype=float))
            shift = 0.0 if numeric else (offset - 0.5) * 0.12
            ax.errorbar(xs + shift, means, yerr=sds, marker=marker, capsize=3, label=label,
                        linestyle="-" if numeric else "none")
        if numeric:
            positive = xs[xs > 0]
            if len(positive) == len(xs) and positive.max() / positive.min() >= 50:
                ax.set_xscale("log")
            ax.set_xticks(xs, [s["value"] for s in rows])
        else:
            ax.set_xticks(xs, [s["value"] for s in rows], rotation=20, ha="right")
        ax.set_xlabel(factor)
        ax.set_ylabel("accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def plot_val_curves(results: Sequence[RunResult], path: str | Path, title: str = "") -> bool:
    """One panel per factor: validation accuracy per epoch of each value's first seed (history.csv)."""
    from matplotlib.ticker import MaxNLocator

    from keras_digits.report import read_history

    firsts: dict[tuple[str, str], RunResult] = {}
    for r in results:
        firsts.setdefault((r.variant.factor, r.variant.value), r)
    factors = list(dict.fromkeys(k[0] for k in firsts))
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(factors), figsize=(4.2 * len(factors) + 0.8, 3.8), squeeze=False)
    drew = False
    for ax, factor in zip(axes[0], factors):
        for (f, value), r in firsts.items():
            hist_path = r.run_dir / "history.csv"
            if f != factor or not hist_path.is_file():
                continue
            hist = read_history(hist_path)
            if "val_accuracy" in hist:
                ax.plot(np.arange(1, len(hist["val_accuracy"]) + 1), hist["val_accuracy"], marker="o", ms=3,
                        label=value)
                drew = True
        ax.set_title(factor, fontsize=10)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel("validation accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    if drew:
        save_figure(fig, path)
    plt.close(fig)
    return drew


def write_results(
    out: str | Path,
    stem: str,
    results: Sequence[RunResult],
    *,
    title: str,
    intro: str = "",
    command: str | None = None,
    curves: bool = False,
) -> dict[str, Path]:
    """OUT/<stem>.md (table), OUT/<stem>.csv (runs), OUT/<stem>.png and optionally OUT/<stem>_curves.png."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"md": out / f"{stem}.md", "csv": out / f"{stem}.csv", "png": out / f"{stem}.png"}
    rows = result_rows(results)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(COLUMNS), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    write_text(paths["csv"], buf.getvalue())
    summary = summarize(results)
    plot_summary(summary, paths["png"], title)
    if curves and plot_val_curves(results, out / f"{stem}_curves.png", title):
        paths["curves"] = out / f"{stem}_curves.png"
    parts = [f"# {title}", ""]
    if intro:
        parts += [intro.strip(), ""]
    if command:
        parts += ["Reproduce with:", "", "```", command, "```", ""]
    parts += [markdown_table(summary), "",
              "Mean ± sample standard deviation over the seeds. **Bold**: the best setting of each factor by "
              "validation accuracy, the only thing used to choose; test accuracy is reported, never used to "
              "choose. Training seconds are fit time on the machine that ran it. A run whose loss became "
              "non-finite is marked diverged and left out of the means.", "",
              f"![accuracy per setting]({paths['png'].name})"]
    if "curves" in paths:
        parts += ["", f"![validation accuracy per epoch (first seed)]({paths['curves'].name})"]
    parts += ["", f"Per-run numbers: [{paths['csv'].name}]({paths['csv'].name}); run directories under `runs/`."]
    write_text(paths["md"], "\n".join(parts) + "\n")
    return paths


def command_line(prog: str, argv: Sequence[str] | None) -> str:
    """The command that reproduces this invocation."""
    args = list(sys.argv[1:] if argv is None else argv)
    return " ".join(["python -m", prog] + [shlex.quote(a) for a in args])


def describe_config(cfg: TrainConfig, keys: Sequence[str] = ("arch", "dataset", "epochs", "batch_size", "lr",
                                                              "optimizer", "early_stopping", "patience",
                                                              "max_train_samples", "augment", "balance",
                                                              "normalize", "model_kwargs")) -> str:
    """`key` = value list of the base configuration's headline fields."""
    d = cfg.to_dict()
    return ", ".join(f"`{k}={json.dumps(d[k]) if isinstance(d[k], dict) else d[k]}`" for k in keys)


# ---------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    """The train CLI's options plus --vary, --seeds, --out."""
    from keras_digits.train import build_parser as train_parser

    p = train_parser()
    p.prog = "python -m keras_digits.sweep"
    p.description = ("One-factor-at-a-time sweep around a base configuration (the train options given), "
                     "each setting over several seeds; writes OUT/sweep.md, sweep.csv, sweep.png and the runs.")
    g = p.add_argument_group("sweep")
    g.add_argument("--vary", action="append", required=True, metavar="FIELD=V1,V2,...",
                   help="a config field and its values (repeatable; one factor varies at a time), "
                        "e.g. --vary lr=0.001,0.01,0.1 --vary batch_size=16,32,64")
    g.add_argument("--seeds", type=positive_int, default=1, help="seeds per setting: seed, seed+1, ...")
    g.add_argument("--out", default=None, help="report folder (default reports/sweep-<dataset>-<arch>)")
    return p


def quiet_retracing_warnings() -> None:
    """Many short trainings in one process make TensorFlow warn about retracing; that is expected here."""
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")


def main(argv: Sequence[str] | None = None) -> int:
    from keras_digits.train import config_from_args

    args = build_parser().parse_args(argv)
    given = vars(args)
    vary, seeds, out = given.pop("vary"), given.pop("seeds"), given.pop("out")
    if "run_dir" in given:
        raise KerasDigitsError("the sweep names its run directories itself; use --out")
    if given.pop("overwrite", False):
        raise KerasDigitsError("--overwrite does not apply to sweeps; use another --out or delete its runs")
    given.setdefault("verbose", 0)
    base = config_from_args(argparse.Namespace(**given))
    variants = parse_vary(vary)
    quiet_retracing_warnings()
    out = check_output_dir(Path(out) if out else Path("reports") / f"sweep-{base.dataset}-{base.arch}", "--out")
    with hold(out, "sweep folder"):
        results = run_grid(base, variants, seeds, out)
        paths = write_results(out, "sweep", results, title=f"Sweep: {base.arch} on {base.dataset}",
                              intro=f"One factor at a time around the base configuration {describe_config(base)}; "
                                    f"{seeds} seed(s) per setting (seed {base.seed} + i).",
                              command=command_line("keras_digits.sweep", argv), curves=True)
    print(markdown_table(summarize(results)))
    print(f"wrote {paths['md']}, {paths['csv'].name}, {paths['png'].name}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
