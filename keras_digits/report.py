"""Plots and markdown for a run (learning curves, confusion matrix, ROC and precision-recall curves,
metrics table, scores on other data and robustness), and `python -m keras_digits.report --run RUN`,
which (re)writes the run's report.html and the results part of its report.md from what its directory
holds, under the run's lock. Label names are data: every text put on a plot goes through `plain`."""

from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import Callable, Sequence, TypeVar

import numpy as np

from keras_digits.io import save_figure, write_text

T = TypeVar("T")


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plain(text: object) -> str:
    """`text` for a matplotlib label, shown as it is: every `$` escaped, so a label name is never mathtext."""
    return str(text).replace("$", r"\$")


def try_plot(what: str, draw: Callable[[], T]) -> tuple[T | None, str]:
    """(draw(), "") or, when drawing fails, (None, why) after one warning line on stderr: a plot never
    stops a result from being saved."""
    from keras_digits.cli import one_line

    try:
        return draw(), ""
    except Exception as exc:  # matplotlib raises many types (mathtext, fonts, memory, sizes)
        why = f"{type(exc).__name__}: {one_line(str(exc))[:200]}"
        print(f"warning: the {what} plot could not be drawn and is left out ({why})", file=sys.stderr)
        return None, why


def read_history(path: str | Path) -> dict[str, list[float]]:
    """history.csv (Keras CSVLogger) as columns."""
    cols: dict[str, list[float]] = {}
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            for k, v in row.items():
                try:
                    cols.setdefault(k, []).append(float(v))
                except (TypeError, ValueError):
                    cols.setdefault(k, []).append(float("nan"))
    return cols


def plot_curves_figure(history: dict[str, list[float]], title: str = ""):
    """Loss and accuracy per epoch, train vs validation, as a matplotlib figure."""
    plt = pyplot()
    epochs = np.asarray(history.get("epoch", range(len(history.get("loss", []))))) + 1
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("loss", "accuracy"), strict=True):
        for key, label in ((metric, "train"), (f"val_{metric}", "validation")):
            if key in history:
                ax.plot(epochs, history[key], marker="o", ms=3, label=label)
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(plain(title))
    return fig


def save_and_close(fig, path: str | Path) -> None:
    """Save a figure atomically and close it, even when saving fails."""
    try:
        save_figure(fig, path)
    finally:
        pyplot().close(fig)


def plot_curves(history: dict[str, list[float]], path: str | Path, title: str = "") -> None:
    """Loss and accuracy per epoch, train vs validation, saved to `path`."""
    save_and_close(plot_curves_figure(history, title), path)


def plot_roc_pr_figure(y: np.ndarray, probs: np.ndarray, names: Sequence[str]):
    """One-vs-rest ROC and precision-recall curves per class; returns (figure, [(roc_auc, ap)] per class)."""
    from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_curve

    plt = pyplot()
    y = np.asarray(y).astype(int)
    fig, (roc_ax, pr_ax) = plt.subplots(1, 2, figsize=(11, 4.6))
    colors = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    scores = []
    for c, name in enumerate(names):
        truth = (y == c).astype(int)
        if truth.min() == truth.max():  # a class absent from (or alone in) the split has no curve
            scores.append((None, None))
            continue
        fpr, tpr, _ = roc_curve(truth, probs[:, c])
        prec, rec, _ = precision_recall_curve(truth, probs[:, c])
        roc_auc, ap = float(auc(fpr, tpr)), float(average_precision_score(truth, probs[:, c]))
        scores.append((roc_auc, ap))
        label = plain(str(name)[:16])
        roc_ax.plot(fpr, tpr, lw=1.2, color=colors(c % colors.N), label=f"{label} ({roc_auc:.3f})")
        pr_ax.plot(rec, prec, lw=1.2, color=colors(c % colors.N), label=f"{label} ({ap:.3f})")
    roc_ax.plot([0, 1], [0, 1], ls=":", color="grey")
    roc_ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC (AUC)")
    pr_ax.set(xlabel="recall", ylabel="precision", title="precision-recall (average precision)")
    for ax in (roc_ax, pr_ax):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right" if ax is roc_ax else "lower left")
    fig.tight_layout()
    return fig, scores


def plot_confusion(cm: np.ndarray, labels: Sequence[str], path: str | Path, title: str = "") -> None:
    """Confusion matrix, counts annotated, rows = true class, saved to `path`."""
    save_and_close(plot_confusion_figure(cm, labels, title), path)


def plot_confusion_figure(cm: np.ndarray, labels: Sequence[str], title: str = ""):
    """Confusion matrix, counts annotated, rows = true class, as a matplotlib figure."""
    plt = pyplot()
    cm = np.asarray(cm)
    n = len(labels)
    size = max(5.0, 0.55 * n + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    row_sums = cm.sum(axis=1, keepdims=True).clip(min=1)
    ax.imshow(cm / row_sums, cmap="Blues", vmin=0, vmax=1)
    short = [plain(str(label)[:14]) for label in labels]
    ax.set_xticks(range(n), short, rotation=45, ha="right")
    ax.set_yticks(range(n), short)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(n):
        for j in range(n):
            if cm[i, j]:
                frac = cm[i, j] / row_sums[i, 0]
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if frac > 0.5 else "black")
    if title:
        ax.set_title(plain(title))
    return fig


def metrics_markdown(metrics: dict, title: str = "") -> str:
    """A short markdown table of the headline metrics per split."""
    lines = [f"# {title}", ""] if title else []
    lines += ["| split | accuracy | loss | macro F1 | AUC |", "| --- | --- | --- | --- | --- |"]
    for split, m in metrics.items():
        if not isinstance(m, dict) or "accuracy" not in m:
            continue
        auc = m.get("auc")
        lines.append(
            f"| {split} | {m['accuracy']:.4f} | {m['loss']:.4f} | {m['f1']:.4f} | "
            f"{'' if auc is None else f'{auc:.4f}'} |"
        )
    return "\n".join(lines) + "\n"


def write_markdown(path: str | Path, text: str) -> None:
    """Write a markdown report atomically."""
    write_text(path, text)


RESULTS_MARK = "<!-- scores from keras_digits.evaluate: regenerated with the page, edits below are lost -->"


def robustness_table(rows: Sequence[dict]) -> str:
    """The robustness table: clean first, then each corruption and severity with its accuracy drop."""
    clean = next((r["accuracy"] for r in rows if r.get("corruption") == "clean"), None)
    lines = ["| corruption | severity | accuracy | change |", "| --- | ---: | ---: | ---: |"]
    for r in rows:
        first = r.get("corruption") == "clean"
        change = "" if first or clean is None else f"{r['accuracy'] - clean:+.4f}"
        lines.append(f"| {_cell(r.get('corruption'))} | {'' if first else _cell(r.get('severity'))} | "
                     f"{r['accuracy']:.4f} | {change} |")
    return "\n".join(lines)


def _cell(value: object) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _num(value: object) -> str:
    return f"{value:.4f}" if isinstance(value, float) else "" if value is None else _cell(value)


def label_map_text(mapping: object) -> str:
    """A --label-map as `data → model, ...` (empty without one)."""
    if not isinstance(mapping, dict) or not mapping:
        return ""
    return ", ".join(f"{k} → {v}" for k, v in mapping.items())


def results_markdown(run_dir: str | Path) -> str:
    """Every metrics-*.json and robustness-*.json of a run as markdown, each labelled by what was scored."""
    from keras_digits.io import read_json_object

    run_dir = Path(run_dir)
    rows = []
    for path in sorted(run_dir.glob("metrics-*.json")):
        m = read_json_object(path, lenient=True)
        data = " · ".join(str(v) for v in (m.get("dataset"), m.get("source")) if v)
        for split, s in m.items():
            if isinstance(s, dict) and "accuracy" in s:
                rows.append(f"| {_cell(path.name)} | {_cell(data)} | {_cell(split)} | {_num(s.get('n'))} | "
                            f"{_cell(m.get('preprocess', 'none'))} | {_cell(label_map_text(m.get('label_map')))} | "
                            f"{_num(s.get('accuracy'))} | {_num(s.get('f1'))} | {_num(s.get('auc'))} |")
    parts = []
    if rows:
        parts += ["## Scores on other data", "",
                  "| file | data | split | images | preprocessing | label map | accuracy | macro F1 | AUC |",
                  "| --- | --- | --- | ---: | --- | --- | ---: | ---: | ---: |", *rows, ""]
    tables = []
    for path in sorted(run_dir.glob("robustness-*.json")):
        r = read_json_object(path, lenient=True)
        good = [x for x in r.get("rows") or [] if isinstance(x, dict) and isinstance(x.get("accuracy"), (int, float))]
        if good:
            mapped = label_map_text(r.get("label_map"))
            tables += [f"### {_cell(r.get('dataset'))} {_cell(r.get('split'))} · {_cell(r.get('preprocess'))} "
                       f"preprocessing · {_cell(r.get('n'))} images · seed {_cell(r.get('seed'))}"
                       + (f" · label map {_cell(mapped)}" if mapped else "") + f" ({_cell(path.name)})", "",
                       robustness_table(good), ""]
    if tables:
        parts += ["## Robustness", "", *tables]
    return "\n".join(parts)


def update_results_markdown(run_dir: str | Path) -> None:
    """Rewrite the part of RUN/report.md below RESULTS_MARK from the run's result files (train's part kept)."""
    path = Path(run_dir) / "report.md"
    if not path.is_file():
        return
    head = path.read_text(encoding="utf-8").split(RESULTS_MARK)[0].rstrip("\n") + "\n"
    extra = results_markdown(run_dir)
    text = head + (f"\n{RESULTS_MARK}\n\n{extra}" if extra else "")
    if text != path.read_text(encoding="utf-8"):
        write_text(path, text)


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    from keras_digits.errors import KerasDigitsError
    from keras_digits.html_report import write_run_page
    from keras_digits.lock import hold

    p = argparse.ArgumentParser(prog="python -m keras_digits.report",
                                description="(Re)write a finished run's self-contained report.html from its directory.")
    p.add_argument("--run", required=True, help="run directory written by keras_digits.train")
    args = p.parse_args(argv)
    run = Path(args.run)
    if not (run / "config.json").is_file():
        raise KerasDigitsError(f"{run} is not a run directory (no config.json)")
    with hold(run, "run directory"):  # explain, evaluate and train write into it under this lock
        path = write_run_page(run)
    if path is None:
        raise KerasDigitsError(f"{run} has not finished (or diverged): no report; run its train command again")
    print(f"report written to {path}")
    return 0


if __name__ == "__main__":
    import sys

    from keras_digits.cli import run_cli

    sys.exit(run_cli(main))
