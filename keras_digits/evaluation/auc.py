"""Macro one-vs-rest ROC AUC: the MedMNIST benchmark's AUC (the mean over classes of each class's AUC
against the rest), used for scoring (evaluation.metrics.classification_metrics) and for model selection on
validation (`--select-on auc`)."""

from __future__ import annotations

import numpy as np


def macro_auc(y_true, probs) -> float | None:
    """AUC of `probs` (n, classes) for integer labels `y_true`, or None where it is undefined (a class
    absent from `y_true`, non-finite scores)."""
    from sklearn.metrics import roc_auc_score

    y_true = np.asarray(y_true).astype(int)
    probs = np.asarray(probs, dtype=np.float64)
    n_classes = probs.shape[1]
    if not np.isfinite(probs).all() or len(np.unique(y_true)) != n_classes or n_classes < 2:
        return None
    if n_classes == 2:
        return float(roc_auc_score(y_true, probs[:, 1]))
    norm = probs / np.maximum(probs.sum(axis=1, keepdims=True), 1e-12)
    return float(roc_auc_score(y_true, norm, multi_class="ovr", labels=list(range(n_classes))))
