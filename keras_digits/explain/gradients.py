"""Input-gradient methods: gradient saliency, SmoothGrad, Integrated Gradients (black and blurred baselines).

Maps are (N, H, W) float32. Saliency and SmoothGrad are magnitudes (the largest absolute value over
the colour channels); Integrated Gradients keeps its sign, summed over channels (positive: evidence
for the target), and its attributions add up to the logit score's change from the baseline to the
image (completeness).
"""

from __future__ import annotations

import numpy as np

from keras_digits.explain.core import Explainer, blur


def saliency(ex: Explainer, x: np.ndarray, t: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Simonyan et al. 2014: |d score / d pixel|, the largest over channels."""
    return np.abs(ex.input_gradients(x, t, c)).max(axis=-1).astype(np.float32)


def _noise(ex: Explainer, sample: np.ndarray) -> np.ndarray:
    """The noise of each sample index, the same for every image (so batching does not change the maps)."""
    o = ex.options
    out = np.empty((len(sample), *ex.input_shape), np.float32)
    for j, s in enumerate(sample):
        rng = np.random.default_rng([o.seed, int(s)])
        out[j] = rng.normal(0.0, o.noise * 255.0, ex.input_shape)
    return out


def smoothgrad(ex: Explainer, x: np.ndarray, t: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Smilkov et al. 2017: the mean over noisy copies (std `noise` x 255) of the saliency map."""
    n = max(1, ex.options.samples)
    mean = ex.map_pairs(
        len(x),
        n,
        lambda i, v: x[i] + _noise(ex, v),
        lambda xb, i: np.abs(ex.input_gradients(xb, t[i], c[i])).max(axis=-1),
        label="smoothgrad",
        weights=np.full(n, 1.0 / n),
    )
    return mean.astype(np.float32)


def integrated_gradients(
    ex: Explainer, x: np.ndarray, t: np.ndarray, c: np.ndarray, baseline: np.ndarray
) -> np.ndarray:
    """Sundararajan et al. 2017: (x - x') * mean of the gradients along the straight path from x' to x
    (trapezoid rule over `steps` + 1 points), summed over channels."""
    steps = max(1, ex.options.steps)
    alphas = np.linspace(0.0, 1.0, steps + 1, dtype=np.float32)
    weights = np.full(steps + 1, 1.0 / steps, np.float32)
    weights[[0, -1]] /= 2.0
    diff = (x - baseline).astype(np.float32)

    def make(i: np.ndarray, v: np.ndarray) -> np.ndarray:
        return baseline[i] + alphas[v][:, None, None, None] * diff[i]

    avg = ex.map_pairs(
        len(x), steps + 1, make, lambda xb, i: ex.input_gradients(xb, t[i], c[i]), label="ig", weights=weights
    )  # (N, H, W, C): the path's mean gradient
    return (diff * avg).sum(axis=-1).astype(np.float32)


def ig(ex: Explainer, x: np.ndarray, t: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Integrated Gradients from a black image (all zeros)."""
    return integrated_gradients(ex, x, t, c, np.zeros_like(x, dtype=np.float32))


def ig_blur(ex: Explainer, x: np.ndarray, t: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Integrated Gradients from a blurred copy of the image (`core.blur`)."""
    return integrated_gradients(ex, x, t, c, blur(x))
