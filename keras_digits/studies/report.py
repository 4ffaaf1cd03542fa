"""The tables and figures of a grid of runs: OUT/<stem>.csv (one row per run), OUT/<stem>.md (per
setting: seeds, mean ± sd of validation and test accuracy, test macro-F1, epochs, seconds; the best
setting of each factor by validation accuracy in bold), OUT/<stem>.png (accuracy per setting) and
OUT/<stem>_curves.png (validation accuracy per epoch)."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from keras_digits.reporting.plots import plain, save_and_close, try_plot
from keras_digits.reporting.plots import pyplot as _pyplot
from keras_digits.studies.grid import RunResult, Variant
from keras_digits.utils.io import save_figure, write_text

COLUMNS = (
    "factor",
    "value",
    "seed",
    "status",
    "val_accuracy",
    "test_accuracy",
    "test_f1",
    "epochs_run",
    "train_seconds",
    "run_dir",
)


def _get(metrics: dict, split: str, key: str) -> float:
    value = (metrics.get(split) or {}).get(key)
    return float("nan") if value is None else float(value)


def result_rows(results: Sequence[RunResult]) -> list[dict[str, Any]]:
    """One flat row per run (the CSV)."""
    return [
        {
            "factor": r.variant.factor,
            "value": r.variant.value,
            "seed": r.seed,
            "status": r.metrics.get("status", "finished"),
            "val_accuracy": _get(r.metrics, "val", "accuracy"),
            "test_accuracy": _get(r.metrics, "test", "accuracy"),
            "test_f1": _get(r.metrics, "test", "f1"),
            "epochs_run": r.metrics.get("epochs_run", float("nan")),
            "train_seconds": r.metrics.get("train_seconds", float("nan")),
            "run_dir": r.run_dir.name,
        }
        for r in results
    ]


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
    for r, row in zip(results, result_rows(results), strict=True):
        key = (r.variant.factor, r.variant.value)
        groups.setdefault(key, []).append(row)
        variants.setdefault(key, r.variant)
    summary = []
    for key, rows in groups.items():
        s: dict[str, Any] = {
            "factor": key[0],
            "value": key[1],
            "x": variants[key].x,
            "n": len(rows),
            "diverged": sum(row["status"] == "diverged" for row in rows),
        }
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
    lines = [
        "| factor | value | seeds | val accuracy | test accuracy | test macro-F1 | epochs | train s |",
        "| --- | --- | ---: | --- | --- | --- | ---: | ---: |",
    ]
    for s in summary:
        val = _fmt(s["val_accuracy"], s["val_accuracy_sd"])
        if s.get("best"):
            val = f"**{val}**"
        if s.get("diverged"):
            val = f"{val} (diverged: {s['diverged']} of {s['n']})"
        lines.append(
            f"| {s['factor']} | {s['value']} | {s['n']} | {val} | "
            f"{_fmt(s['test_accuracy'], s['test_accuracy_sd'])} | {_fmt(s['test_f1'], s['test_f1_sd'])} | "
            f"{_fmt(s['epochs_run'], float('nan'), 1)} | {_fmt(s['train_seconds'], float('nan'), 0)} |"
        )
    return "\n".join(lines) + "\n"


def plot_summary(summary: Sequence[dict[str, Any]], path: str | Path, title: str = "") -> None:
    """One panel per factor: validation and test accuracy (mean ± sd) against the factor's values."""
    plt = _pyplot()
    factors = list(dict.fromkeys(s["factor"] for s in summary))
    fig, axes = plt.subplots(1, len(factors), figsize=(4.2 * len(factors) + 0.8, 3.8), squeeze=False)
    for ax, factor in zip(axes[0], factors, strict=True):
        rows = [s for s in summary if s["factor"] == factor]
        numeric = all(s["x"] is not None for s in rows)
        xs = np.asarray([s["x"] for s in rows], dtype=float) if numeric else np.arange(len(rows), dtype=float)
        for offset, (metric, label, marker) in enumerate(
            (("val_accuracy", "validation", "o"), ("test_accuracy", "test", "s"))
        ):
            means = np.asarray([s[metric] for s in rows], dtype=float)
            sds = np.nan_to_num(np.asarray([s[f"{metric}_sd"] for s in rows], dtype=float))
            shift = 0.0 if numeric else (offset - 0.5) * 0.12
            ax.errorbar(
                xs + shift, means, yerr=sds, marker=marker, capsize=3, label=label, linestyle="-" if numeric else "none"
            )
        if numeric:
            positive = xs[xs > 0]
            if len(positive) == len(xs) and positive.max() / positive.min() >= 50:
                ax.set_xscale("log")
            ax.set_xticks(xs, [plain(s["value"]) for s in rows])
        else:
            ax.set_xticks(xs, [plain(s["value"]) for s in rows], rotation=20, ha="right")
        ax.set_xlabel(plain(factor))
        ax.set_ylabel("accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(plain(title))
    fig.tight_layout()
    save_and_close(fig, path)


def plot_val_curves(results: Sequence[RunResult], path: str | Path, title: str = "") -> bool:
    """One panel per factor: validation accuracy per epoch of each value's first seed (history.csv)."""
    from matplotlib.ticker import MaxNLocator

    from keras_digits.reporting.history import read_history

    firsts: dict[tuple[str, str], RunResult] = {}
    for r in results:
        firsts.setdefault((r.variant.factor, r.variant.value), r)
    factors = list(dict.fromkeys(k[0] for k in firsts))
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(factors), figsize=(4.2 * len(factors) + 0.8, 3.8), squeeze=False)
    drew = False
    for ax, factor in zip(axes[0], factors, strict=True):
        for (f, value), r in firsts.items():
            hist_path = r.run_dir / "history.csv"
            if f != factor or not hist_path.is_file():
                continue
            hist = read_history(hist_path)
            if "val_accuracy" in hist:
                ax.plot(
                    np.arange(1, len(hist["val_accuracy"]) + 1),
                    hist["val_accuracy"],
                    marker="o",
                    ms=3,
                    label=plain(value),
                )
                drew = True
        ax.set_title(plain(factor), fontsize=10)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel("validation accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(plain(title))
    try:
        fig.tight_layout()
        if drew:
            save_figure(fig, path)
    finally:
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
    """OUT/<stem>.md (table), OUT/<stem>.csv (runs), OUT/<stem>.png, optionally OUT/<stem>_curves.png, and
    OUT/<stem>.html (the table and figure, linking each run's report.html)."""
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
    missing = []  # a figure that cannot be drawn is left out (and said so), never the table
    if try_plot("summary", lambda: plot_summary(summary, paths["png"], title))[1]:
        paths["png"].unlink(missing_ok=True)  # not an older figure beside the new table
        missing.append("summary")
    if curves:
        drew, why = try_plot("validation curves", lambda: plot_val_curves(results, out / f"{stem}_curves.png", title))
        if drew:
            paths["curves"] = out / f"{stem}_curves.png"
        elif why:
            missing.append("validation curves")
    parts = [f"# {title}", ""]
    if intro:
        parts += [intro.strip(), ""]
    if command:
        parts += ["Reproduce with:", "", "```", command, "```", ""]
    parts += [
        markdown_table(summary),
        "",
        "Mean ± sample standard deviation over the seeds. **Bold**: the best setting of each factor by "
        "validation accuracy, the only thing used to choose; test accuracy is reported, never used to "
        "choose. Training seconds are fit time on the machine that ran it. A run whose loss became "
        "non-finite is marked diverged and left out of the means.",
    ]
    if "summary" not in missing:
        parts += ["", f"![accuracy per setting]({paths['png'].name})"]
    if missing:
        parts += ["", f"The {' and '.join(missing)} figure could not be drawn (see the warning printed)."]
    if "curves" in paths:
        parts += ["", f"![validation accuracy per epoch (first seed)]({paths['curves'].name})"]
    parts += ["", f"Per-run numbers: [{paths['csv'].name}]({paths['csv'].name}); run directories under `runs/`."]
    write_text(paths["md"], "\n".join(parts) + "\n")
    from keras_digits.reporting.html import grid_page

    runs = list(dict.fromkeys((r.run_dir.name, r.run_dir) for r in results))
    paths["html"] = out / f"{stem}.html"
    write_text(paths["html"], grid_page(out, title, markdown_table(summary), paths["png"], runs))
    return paths
