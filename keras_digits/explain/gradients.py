"""Input-gradient methods: gradient saliency, Gradient x Input, SmoothGrad, SquareGrad, VarGrad, Integrated
Gradients (black and blurred baselines), GradientSHAP, and the modified-backpropagation ones (Guided
Backpropagation, DeepLIFT's rescale rule; explain.modified).

Maps are (N, H, W) float32. Saliency, SmoothGrad and Guided Backpropagation are magnitudes (the largest
absolute value over the colour channels); SquareGrad and VarGrad are non-negative (summed over channels);
Gradient x Input, Integrated Gradients, GradientSHAP and DeepLIFT keep their sign, summed over channels
(positive: evidence for the target). IG and DeepLIFT add up to the logit score's change from their
baseline to the image (completeness; DeepLIFT exactly only without max pooling).

"Black" is the low end of the model's input range (`Options.value_range`), and noise is scaled to it.
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
        out[j] = rng.normal(0.0, o.noise * ex.span, ex.input_shape)
    return out


def smoothgrad(ex: Explainer, x: np.ndarray, t: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Smilkov et al. 2017: the mean over noisy copies (std `noise` x the input range) of the saliency map."""
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
    """Integrated Gradients from a black image (the low end of the input range)."""
    return integrated_gradients(ex, x, t, c, ex.black(x))


def ig_blur(ex: Explainer, x: np.ndarray, t: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Integrated Gradients from a blurred copy of the image (`core.blur`)."""
    return integrated_gradients(ex, x, t, c, blur(x))


def gradinput(ex: Explainer, x: np.ndarray, t: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Shrikumar et al. 2016: (x - black) * d score / d x, summed over channels (the first-order Taylor term;
    with a 0..255 model, plain x * gradient)."""
    return ((x - ex.low) * ex.input_gradients(x, t, c)).sum(axis=-1).astype(np.float32)


def _gradient_moments(ex: Explainer, x: np.ndarray, t: np.ndarray, c: np.ndarray, label: str) -> np.ndarray:
    """(N, H, W, C, 2): the mean over `samples` noisy copies (SmoothGrad's noise) of the gradient and of its square."""
    n = max(1, ex.options.samples)

    def both(xb: np.ndarray, i: np.ndarray) -> np.ndarray:
        g = ex.input_gradients(xb, t[i], c[i]).astype(np.float64)
        return np.stack([g, g * g], axis=-1)

    return ex.map_pairs(len(x), n, lambda i, v: x[i] + _noise(ex, v), both, label=label, weights=np.full(n, 1.0 / n))


def squaregrad(ex: Explainer, x: np.ndarray, t: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Hooker et al. 2019: the mean of the squared gradient over noisy copies, summed over channels."""
    return _gradient_moments(ex, x, t, c, "squaregrad")[..., 1].sum(axis=-1).astype(np.float32)


def vargrad(ex: Explainer, x: np.ndarray, t: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Adebayo et al. 2018: the variance of the gradient over noisy copies, summed over channels."""
    m = _gradient_moments(ex, x, t, c, "vargrad")
    return np.maximum(m[..., 1] - m[..., 0] ** 2, 0.0).sum(axis=-1).astype(np.float32)


def _baselines(ex: Explainer, x: np.ndarray, i: np.ndarray, v: np.ndarray) -> np.ndarray:
    """GradientSHAP's baseline for (image i, sample v): a background image drawn for sample v (the same for
    every image), or without a background black for even samples and the image's blurred copy for odd ones."""
    bg = ex.options.background
    if bg is None:
        black = np.full(x[i].shape, ex.low, np.float32)
        return np.where((v % 2 == 0)[:, None, None, None], black, blur(x[i]))
    picks = [int(np.random.default_rng([ex.options.seed, 23, int(k)]).integers(0, len(bg))) for k in v]
    return np.asarray(bg, np.float32)[picks]


def _alpha(ex: Explainer, v: np.ndarray) -> np.ndarray:
    return np.array([np.random.default_rng([ex.options.seed, 29, int(k)]).random() for k in v], np.float32)


def gradshap(ex: Explainer, x: np.ndarray, t: np.ndarray, c: np.ndarray) -> np.ndarray:
    """GradientSHAP / expected gradients (Lundberg & Lee 2017; Erion et al. 2021): the mean over `samples`
    draws of a baseline b and a point alpha ~ U(0, 1) of (x - b) * d score / d x at b + alpha (x - b),
    summed over channels. Baselines: `Options.background` (the CLI passes training images), else black and
    blurred copies."""
    n = max(1, ex.options.samples)

    def make(i: np.ndarray, v: np.ndarray) -> np.ndarray:
        b = _baselines(ex, x, i, v)
        return b + _alpha(ex, v)[:, None, None, None] * (x[i] - b)

    def fn(xb: np.ndarray, i: np.ndarray, v: np.ndarray) -> np.ndarray:
        return ((x[i] - _baselines(ex, x, i, v)) * ex.input_gradients(xb, t[i], c[i])).sum(axis=-1)

    mean = ex.map_pairs(len(x), n, make, fn, label="gradshap", weights=np.full(n, 1.0 / n), with_variant=True)
    return mean.astype(np.float32)


def guided_backprop(ex: Explainer, x: np.ndarray, t: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Springenberg et al. 2015: the gradient with only positive gradients passed back through each
    activation (explain.modified, "guided"); the largest magnitude over channels."""
    return np.abs(ex.modified_gradients(x, t, c, "guided")).max(axis=-1).astype(np.float32)


def deeplift(ex: Explainer, x: np.ndarray, t: np.ndarray, c: np.ndarray) -> np.ndarray:
    """DeepLIFT with the rescale rule (Shrikumar et al. 2017) from a black reference: (x - x0) times the
    multipliers of explain.modified's "rescale" rule, summed over channels."""
    ref = ex.black(x)
    return ((x - ref) * ex.modified_gradients(x, t, c, "rescale", ref)).sum(axis=-1).astype(np.float32)
