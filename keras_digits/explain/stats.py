"""Summaries the metrics share: a mean with its standard error, and "better than a reference" by a paired test."""

from __future__ import annotations

import math

import numpy as np


def mean_se(a: np.ndarray) -> dict:
    """{"mean", "se"} of the finite values of `a` (NaN rows, e.g. a constant map's correlation, left out)."""
    a = np.asarray(a, np.float64)
    a = a[np.isfinite(a)]
    if not len(a):
        return {"mean": None, "se": None}
    se = float(a.std(ddof=1) / math.sqrt(len(a))) if len(a) > 1 else 0.0
    return {"mean": float(a.mean()), "se": se}


def beats(diff: np.ndarray) -> bool:
    """Whether paired differences (positive: better than the reference) average more than 2 standard errors."""
    diff = np.asarray(diff, np.float64)
    diff = diff[np.isfinite(diff)]
    if not len(diff):
        return False
    if len(diff) < 2:
        return bool(diff.mean() > 0)
    se = diff.std(ddof=1) / math.sqrt(len(diff))
    return bool(diff.mean() > 2.0 * se)


def pearson_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-row Pearson correlation of (N, K) arrays; NaN where a row is constant."""
    a = np.asarray(a, np.float64) - np.mean(a, axis=1, keepdims=True)
    b = np.asarray(b, np.float64) - np.mean(b, axis=1, keepdims=True)
    den = np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (a * b).sum(axis=1) / np.where(den > 0, den, 1.0), np.nan)
