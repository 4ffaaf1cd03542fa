"""Deletion and insertion AUC (Petsiuk et al., RISE, 2018): is the map faithful to the model?

Protocol (also written into explain.json as `PROTOCOL`):

* pixel order: the map's values, highest first; ties are broken by a fixed random order (seeded per
  image), so a constant map is a random order, never a raster scan;
* steps: `steps` (default 50) evenly spaced fractions of the pixels, H * W / steps pixels each (rounded),
  so curves have steps + 1 points from none to all pixels;
* deletion: start from the image, set the next pixels to black (the low end of the input range, every
  channel); a faithful map makes the score fall fast (low AUC is good);
* insertion: start from the blurred image (`core.blur`: Gaussian, sigma = side / 10) and copy the next
  original pixels in; a faithful map makes the score rise fast (high AUC is good);
* score: the probability score of the target class (`core.Explainer.prob_score`); targets are the
  predicted classes of a fixed subset of the split (the first `n` of a seed-0 permutation);
* AUC: trapezoid rule over the fraction of pixels (0..1), the mean over images with its standard error;
* baseline: a map of uniform random values (seeded per image). A method "beats random" on a metric
  when its mean is better than the random map's by more than two standard errors of the difference;
  one that does not beat random on both metrics is flagged.
"""

from __future__ import annotations

import numpy as np

from keras_digits.explain.core import Explainer, blur
from keras_digits.explain.stats import beats, mean_se

DEFAULT_STEPS = 50
PROTOCOL = {
    "pixel_order": "map value, highest first; ties broken by a fixed random order per image",
    "deletion_baseline": "pixels set to black (the low end of the input range) in every channel",
    "insertion_start": "Gaussian-blurred image (sigma = image side / 10), original pixels copied in",
    "score": "probability of the target class (softmax; sigmoid of the logit difference with a contrast)",
    "targets": "the model's predicted class",
    "auc": "trapezoid rule over the fraction of pixels changed (0..1), mean over images",
    "beats_random": "mean better than the random map's by more than 2 standard errors of the paired difference",
}


def random_maps(n: int, shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    return np.stack([np.random.default_rng([seed, 11, i]).random(shape) for i in range(n)]).astype(np.float32)


def pixel_ranks(maps: np.ndarray, seed: int = 0) -> np.ndarray:
    """(N, H*W) rank of each pixel in deletion order (0 = first removed)."""
    n, h, w = maps.shape
    flat = maps.reshape(n, -1).astype(np.float64)
    ranks = np.empty(flat.shape, np.int64)
    for i in range(n):
        jitter = np.random.default_rng([seed, 13, i]).random(h * w)
        order = np.lexsort((jitter, -flat[i]))  # last key first: value (descending), then jitter
        ranks[i, order] = np.arange(h * w)
    return ranks


def curves(
    ex: Explainer,
    x: np.ndarray,
    t: np.ndarray,
    c: np.ndarray,
    maps: np.ndarray,
    steps: int = DEFAULT_STEPS,
    seed: int = 0,
    label: str = "",
) -> tuple[np.ndarray, np.ndarray]:
    """(deletion, insertion) score curves, each (N, steps + 1)."""
    n, h, w = maps.shape
    steps = max(1, min(steps, h * w))
    ranks = pixel_ranks(maps, seed).reshape(n, h, w)
    blurred = blur(x)
    counts = np.rint(np.linspace(0, h * w, steps + 1)).astype(np.int64)  # evenly spaced fractions 0..1

    def changed(i: np.ndarray, v: np.ndarray) -> np.ndarray:
        return (ranks[i] < counts[v][:, None, None])[..., None]

    deletion = ex.pair_scores(
        x,
        t,
        c,
        lambda i, v: np.where(changed(i, v), ex.low, x[i]).astype(np.float32),
        steps + 1,
        label=f"deletion {label}".strip(),
    )
    insertion = ex.pair_scores(
        x,
        t,
        c,
        lambda i, v: np.where(changed(i, v), x[i], blurred[i]).astype(np.float32),
        steps + 1,
        label=f"insertion {label}".strip(),
    )
    return deletion, insertion


def auc(curve: np.ndarray) -> np.ndarray:
    """Per-row area under a curve sampled at evenly spaced fractions 0..1."""
    y = np.asarray(curve, np.float64)
    return ((y[:, 1:] + y[:, :-1]) / 2.0).mean(axis=1)


def evaluate(
    ex: Explainer,
    x: np.ndarray,
    t: np.ndarray,
    c: np.ndarray,
    maps: dict[str, np.ndarray],
    steps: int = DEFAULT_STEPS,
    seed: int = 0,
) -> dict:
    """Deletion/insertion AUC per method and for a random map; see the module docstring."""
    rand = random_maps(len(x), x.shape[1:3], seed)
    per: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name, m in {"random": rand, **maps}.items():
        d, i = curves(ex, x, t, c, m, steps, seed, label=name)
        per[name] = (auc(d), auc(i))

    rd, ri = per["random"]
    out = {"random": {"deletion": mean_se(rd), "insertion": mean_se(ri)}}
    for name in maps:
        d, i = per[name]
        better = {"deletion": beats(rd - d), "insertion": beats(i - ri)}
        out[name] = {
            "deletion": mean_se(d),
            "insertion": mean_se(i),
            "beats_random": better,
            "flagged": not all(better.values()),
        }
    n, h, w = len(x), *x.shape[1:3]
    steps = max(1, min(steps, h * w))
    return {"n": n, "steps": steps, "pixels_per_step": round(h * w / steps, 2), "protocol": PROTOCOL, "methods": out}
