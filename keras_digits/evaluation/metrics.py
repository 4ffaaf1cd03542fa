"""Scores of a model on a split: accuracy, macro F1, AUC, confusion matrix; predictions kept for the page."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


def classification_metrics(y_true: np.ndarray, probs: np.ndarray, label_names: Sequence[str]) -> dict:
    """Every metric of the run format from labels and predicted probabilities."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    from keras_digits.evaluation.auc import macro_auc

    y_true = np.asarray(y_true).astype(int)
    probs = np.asarray(probs, dtype=np.float64)
    n_classes = probs.shape[1]
    labels = list(range(n_classes))
    bad_rows = ~np.isfinite(probs).all(axis=1)  # a broken model: scored as wrong, never a crash
    if bad_rows.any():
        probs = probs.copy()
        probs[bad_rows] = 0.0
    pred = np.where(bad_rows, -1, probs.argmax(axis=1))
    eps = 1e-7
    loss = float(-np.mean(np.log(np.clip(probs[np.arange(len(y_true)), y_true], eps, 1.0))))
    p, r, f, s = precision_recall_fscore_support(y_true, pred, labels=labels, zero_division=0)
    mp, mr, mf, _ = precision_recall_fscore_support(y_true, pred, labels=labels, average="macro", zero_division=0)
    cm = confusion_matrix(y_true, pred, labels=labels)
    auc = None if bad_rows.any() else macro_auc(y_true, probs)  # no AUC from non-finite scores
    names = list(label_names) if len(label_names) == n_classes else [str(i) for i in labels]
    return {
        "n": int(len(y_true)),
        "accuracy": float((pred == y_true).mean()),
        "loss": loss,
        "precision": float(mp),
        "recall": float(mr),
        "f1": float(mf),
        "auc": auc,
        "per_class": [
            {
                "class_id": i,
                "label": names[i],
                "precision": float(p[i]),
                "recall": float(r[i]),
                "f1": float(f[i]),
                "support": int(s[i]),
            }
            for i in labels
        ],
        "confusion_matrix": cm.tolist(),
        **({"nonfinite_outputs": int(bad_rows.sum())} if bad_rows.any() else {}),
    }


def predict_probs(model, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Softmax outputs for uint8 images, batched, no progress bar."""
    from keras_digits.data.pipeline import make_pipeline

    ds = make_pipeline(x, np.zeros(len(x), np.int32), batch_size).map(lambda a, b: a)
    return np.asarray(model.predict(ds, verbose=0))


def evaluate_model(
    model,
    x: np.ndarray,
    y: np.ndarray,
    label_names: Sequence[str],
    batch_size: int = 256,
    keep: tuple[Path, str] | None = None,
) -> dict:
    """Run the model on a split and compute its metrics; with `keep=(run_dir, split)` also write the
    split's predictions and gallery examples there (keras_digits.reporting.predictions), for the run's page."""
    probs = predict_probs(model, x, batch_size)
    if keep is not None:
        from keras_digits.reporting.predictions import save_predictions

        save_predictions(keep[0], keep[1], x, y, probs)
    return classification_metrics(y, probs, label_names)
