"""Do the methods agree? (Krishna et al. 2022, "The Disagreement Problem in Explainable ML".)

Per image, the Spearman rank correlation between every two methods' maps (of their magnitudes, as the
sanity check compares them: saliency-style methods have no sign); the matrix is the mean over images.
An image whose mean pairwise agreement is under `LOW` (0.3) is flagged: the methods tell different
stories about it, so no single map should be trusted alone.
"""

from __future__ import annotations

import numpy as np

from keras_digits.explain.sanity import spearman

LOW = 0.3
PROTOCOL = (
    "Spearman rank correlation of |map| between every two methods per image, averaged over images; "
    f"images whose mean pairwise agreement is under {LOW} are flagged (Krishna et al. 2022)"
)


def agreement(maps: dict[str, np.ndarray]) -> dict:
    """{"methods", "matrix" (K x K mean correlations), "per_image" (mean pairwise, (N,)), "low" (indices)}."""
    names = list(maps)
    k = len(names)
    n = len(next(iter(maps.values()))) if maps else 0
    pair = np.ones((k, k, n))
    for a in range(k):
        for b in range(a + 1, k):
            pair[a, b] = pair[b, a] = spearman(maps[names[a]], maps[names[b]])
    off = ~np.eye(k, dtype=bool)
    per_image = pair[off].mean(axis=0) if k > 1 else np.ones(n)
    return {
        "methods": names,
        "matrix": pair.mean(axis=2).round(4).tolist(),
        "per_image": per_image.round(4).tolist(),
        "low": [int(i) for i in np.flatnonzero(per_image < LOW)] if k > 1 else [],
        "low_below": LOW,
    }
