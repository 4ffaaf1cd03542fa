"""How concentrated a map is: complexity (Bhatt et al. 2020) and sparseness (Chalasani et al. 2020).

Both read the magnitude |a| of each pixel's attribution. Complexity is the Shannon entropy of |a| / sum |a|,
divided by log(pixels) so it runs from 0 (one pixel holds everything) to 1 (spread evenly); lower is a
simpler explanation. Sparseness is the Gini index of |a|, from 0 (even) to 1 (one pixel); higher is
sparser. Neither says whether the map is right: a map of one wrong pixel is as simple as it gets.
"""

from __future__ import annotations

import numpy as np

PROTOCOL = (
    "complexity: entropy of |a| / sum |a| over log(pixels), 0..1, lower is simpler (Bhatt et al. 2020); "
    "sparseness: Gini index of |a|, 0..1, higher is sparser (Chalasani et al. 2020)"
)


def complexity(maps: np.ndarray) -> np.ndarray:
    a = np.abs(maps.reshape(len(maps), -1).astype(np.float64))
    total = a.sum(axis=1, keepdims=True)
    p = a / np.where(total > 0, total, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -(np.where(p > 0, p * np.log(p), 0.0)).sum(axis=1) / np.log(a.shape[1])
    return np.where(total[:, 0] > 0, h, np.nan)


def sparseness(maps: np.ndarray) -> np.ndarray:
    a = np.sort(np.abs(maps.reshape(len(maps), -1).astype(np.float64)), axis=1)
    n = a.shape[1]
    total = a.sum(axis=1)
    k = np.arange(1, n + 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        g = (2.0 * (a * k).sum(axis=1) / (n * total)) - (n + 1) / n
    return np.where(total > 0, g, np.nan)
