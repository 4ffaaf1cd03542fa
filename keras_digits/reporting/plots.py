"""Figures of a run: learning curves, confusion matrix, ROC/PR; label text never parsed as mathtext."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np

from keras_digits.utils.io import save_figure

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
    from keras_digits.utils.cli import one_line

    try:
        return draw(), ""
    except Exception as exc:  # matplotlib raises many types (mathtext, fonts, memory, sizes)
        why = f"{type(exc).__name__}: {one_line(str(exc))[:200]}"
        print(f"warning: the {what} plot could not be drawn and is left out ({why})", file=sys.stderr)
        return None, why


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
                ax.text(
                    j, i, str(cm[i, j]), ha="center", va="center", fontsize=7, color="white" if frac > 0.5 else "black"
                )
    if title:
        ax.set_title(plain(title))
    return fig
