"""MuFidelity (Bhatt et al. 2020, "Evaluating and Aggregating Feature-based Model Explanations"): does the
attribution a map gives a set of pixels predict how much the score drops when that set is removed?

Protocol: the image is cut into a `GRID` x `GRID` grid of cells; each of `SAMPLES` random subsets holds
`SUBSET` (20 %) of the cells (the same subsets for every image, seeded); removing a subset sets its pixels
to black. Per image: the Pearson correlation, over the subsets, between the map's sum over the subset and
the drop of the *logit* score (logits, not probabilities: a confident model's probability barely moves,
which would leave nothing to correlate). Higher is better; a random map scores about 0. A constant map
has no correlation (left out of the mean). Xplique's defaults (9 x 9 grid, 20 %) are used; 128 subsets
instead of its 200.
"""

from __future__ import annotations

import numpy as np

from keras_digits.explain.core import Explainer
from keras_digits.explain.stats import pearson_rows

GRID, SUBSET, SAMPLES = 9, 0.2, 128
PROTOCOL = (
    f"Pearson correlation over {SAMPLES} random subsets of {int(SUBSET * 100)} % of a {GRID}x{GRID} grid of cells "
    "between the map's sum over the subset and the drop of the logit score when the subset is set to black "
    "(Bhatt et al. 2020); higher is better, random is about 0"
)


def subset_masks(shape: tuple[int, int], samples: int = SAMPLES, seed: int = 0) -> np.ndarray:
    """(samples, H, W) bool: the pixels each subset removes."""
    h, w = shape
    grid = min(GRID, h, w)
    cell = (np.arange(h)[:, None] * grid // h) * grid + (np.arange(w)[None, :] * grid // w)
    k = max(1, round(SUBSET * grid * grid))
    out = np.zeros((samples, h, w), bool)
    for s in range(samples):
        chosen = np.random.default_rng([seed, 41, s]).choice(grid * grid, size=k, replace=False)
        out[s] = np.isin(cell, chosen)
    return out


def score_drops(ex: Explainer, x, t, c, masks: np.ndarray, label: str = "mufidelity") -> np.ndarray:
    """(N, samples) logit-score drops when each subset is removed (shared by every method's map)."""
    base = ex.logit_scores(x, t, c)
    removed = ex.pair_scores(
        x,
        t,
        c,
        lambda i, v: np.where(masks[v][..., None], ex.low, x[i]).astype(np.float32),
        len(masks),
        label=label,
        logits=True,
    )
    return base[:, None] - removed


def mufidelity(maps: np.ndarray, masks: np.ndarray, drops: np.ndarray) -> np.ndarray:
    """Per image: the correlation between the map's subset sums and the score drops (NaN for a constant map)."""
    sums = maps.reshape(len(maps), -1).astype(np.float64) @ masks.reshape(len(masks), -1).T.astype(np.float64)
    return pearson_rows(sums, drops)
