"""Plots and markdown for a run: learning curves, confusion matrix, metrics table."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

import numpy as np

from keras_digits.io import save_figure, write_text


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


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


def plot_curves(history: dict[str, list[float]], path: str | Path, title: str = "") -> None:
    """Loss and accuracy per epoch, train vs validation."""
    plt = pyplot()
    epochs = np.asarray(history.get("epoch", range(len(history.get("loss", []))))) + 1
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("loss", "accuracy")):
        for key, label in ((metric, "train"), (f"val_{metric}", "validation")):
            if key in history:
                ax.plot(epochs, history[key], marker="o", ms=3, label=label)
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    save_figure(fig, path)
    plt.close(fig)


def plot_confusion(cm: np.ndarray, labels: Sequence[str], path: str | Path, title: str = "") -> None:
    """Confusion matrix, counts annotated, rows = true class."""
    plt = pyplot()
    cm = np.asarray(cm)
    n = len(labels)
    size = max(5.0, 0.55 * n + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    row_sums = cm.sum(axis=1, keepdims=True).clip(min=1)
    ax.imshow(cm / row_sums, cmap="Blues", vmin=0, vmax=1)
    short = [str(l)[:14] for l in labels]
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
        ax.set_title(title)
    save_figure(fig, path)
    plt.close(fig)


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
