"""Surrogate-model methods on superpixels: LIME and KernelSHAP. Both read the probability score.

Superpixels come from scikit-image's SLIC (Achanta et al. 2012) on the image scaled to 0..1, `segments`
(default 50) wanted, compactness 0.1 for grey images (low: the segments follow the strokes of a digit rather
than a grid; a 28x28 digit gets about 40) and SLIC's default 10 for colour ones (it works in CIELAB, 0..100).
Where SLIC finds no structure (noise-like images: it merges them into a few blobs, under a quarter of the
wanted count) a regular grid of about `segments` cells is used instead.

A superpixel that is "off" is set to black (the low end of the input range), as occlusion and RISE remove
pixels. lime's own default (``hide_color=None``: the segment's mean colour) cannot remove a uniform segment
at all, a solid stroke or a bright square stays what it was, so it would be blind to exactly the segments
SLIC makes cleanest.

* ``lime`` (Ribeiro et al. 2016), as lime_image does it: `coalitions` (default 1000) random on/off
  vectors, the first all on, each superpixel on with probability 1/2; weights
  sqrt(exp(-d^2 / 0.25^2)) of the cosine distance d to the all-on vector; a weighted ridge regression
  (alpha 1, with intercept) of the scores on the vectors.
* ``kernelshap`` (Lundberg & Lee 2017): coalition sizes drawn from the Shapley kernel's distribution,
  p(s) proportional to (M - 1) / (s (M - s)), members uniformly, so every sample weighs the same; the
  efficiency constraint (values add up to score(all on) - score(all off)) is solved exactly by
  eliminating one variable, as the shap package does; a tiny ridge keeps the solve stable.

A superpixel's coefficient or Shapley value is spread evenly over its pixels (value / pixel count), so a
map's pixels add up to the surrogate's terms and a small segment is not outranked by a large one for its
size alone. The same coalitions are used for every image with the same number of superpixels, so batching does not
change the maps.
"""

from __future__ import annotations

import numpy as np

from keras_digits.explain.core import Explainer

COMPACTNESS = 0.1  # grey images scaled to 0..1
COLOUR_COMPACTNESS = 10.0  # colour images (SLIC converts them to CIELAB)
KERNEL_WIDTH = 0.25


def superpixels(ex: Explainer, x: np.ndarray) -> np.ndarray:
    """(N, H, W) int32 labels 0..M_i - 1 of each image: SLIC's, or a regular grid where SLIC finds no structure."""
    from skimage.segmentation import slic

    wanted = max(2, ex.options.segments)
    colour = x.shape[-1] == 3  # SLIC works in CIELAB then (0..100), where its own default compactness fits
    out = np.empty((len(x), *x.shape[1:3]), np.int32)
    for k, img in enumerate(x):
        scaled = np.clip((np.asarray(img, np.float64) - ex.low) / ex.span, 0.0, 1.0)
        seg = slic(
            scaled,
            n_segments=wanted,
            compactness=COLOUR_COMPACTNESS if colour else COMPACTNESS,
            channel_axis=-1,
            start_label=0,
            enforce_connectivity=True,
        )
        if seg.max() + 1 < max(2, wanted // 4):  # noise-like images: SLIC merges everything into a few blobs
            seg = grid_segments(x.shape[1:3], wanted)
        out[k] = np.unique(seg, return_inverse=True)[1].reshape(seg.shape)  # labels 0..M-1 without gaps
    return out


def grid_segments(shape: tuple[int, int], wanted: int) -> np.ndarray:
    """A regular grid of about `wanted` cells (the fallback superpixels)."""
    h, w = shape
    side = max(1.0, (h * w / wanted) ** 0.5)
    rows, cols = max(1, min(h, round(h / side))), max(1, min(w, round(w / side)))
    # even cells (sizes differ by at most a pixel), never a sliver row or column at the edge
    return (np.arange(h)[:, None] * rows // h) * cols + (np.arange(w)[None, :] * cols // w)


def _scores(ex: Explainer, x, t, c, seg, coalitions: list[np.ndarray], label: str) -> np.ndarray:
    """Probability scores of every image under each of its coalitions: (N, S)."""
    n_samples = coalitions[0].shape[0]

    def make(i: np.ndarray, v: np.ndarray) -> np.ndarray:
        on = np.stack([coalitions[k][s][seg[k]] for k, s in zip(i, v)])[..., None]
        return np.where(on, x[i], ex.low).astype(np.float32)

    return ex.pair_scores(x, t, c, make, n_samples, label=label)


def lime_coalitions(m: int, n: int, seed: int) -> np.ndarray:
    """(n, m) bool on/off vectors, the first all on, the others each superpixel on with probability 1/2 (lime_image)."""
    z = np.random.default_rng([seed, 31, m]).integers(0, 2, (max(1, n), m)).astype(bool)
    z[0] = True
    return z


def _weighted_ridge(z: np.ndarray, y: np.ndarray, w: np.ndarray, alpha: float) -> np.ndarray:
    """Coefficients (without the intercept) of ridge regression of y on z with sample weights w."""
    a = np.column_stack([z.astype(np.float64), np.ones(len(z))])
    sw = np.sqrt(w)[:, None]
    reg = alpha * np.eye(a.shape[1])
    reg[-1, -1] = 0.0  # the intercept is not penalised
    coef = np.linalg.solve((a * sw).T @ (a * sw) + reg, (a * sw).T @ (y * sw[:, 0]))
    return coef[:-1]


def lime(ex: Explainer, x: np.ndarray, t: np.ndarray, c: np.ndarray) -> np.ndarray:
    """LIME on SLIC superpixels (see the module docstring)."""
    seg = superpixels(ex, x)
    sizes = seg.reshape(len(x), -1).max(axis=1) + 1
    zs = [lime_coalitions(int(m), ex.options.coalitions, ex.options.seed) for m in sizes]
    scores = _scores(ex, x, t, c, seg, zs, "lime")
    out = np.empty(seg.shape, np.float32)
    for k, z in enumerate(zs):
        zf = z.astype(np.float64)
        cos = 1.0 - zf.sum(axis=1) / np.sqrt(np.maximum(zf.sum(axis=1), 1e-12) * z.shape[1])
        weights = np.sqrt(np.exp(-(cos**2) / KERNEL_WIDTH**2))
        coef = _weighted_ridge(z, scores[k], weights, 1.0)
        out[k] = (coef / np.bincount(seg[k].ravel(), minlength=len(coef)))[seg[k]]
    return out


def shap_coalitions(m: int, n: int, seed: int) -> np.ndarray:
    """(n + 2, m) bool: all off, all on, then n coalitions with sizes from the Shapley kernel's distribution."""
    rng = np.random.default_rng([seed, 37, m])
    z = np.zeros((max(1, n) + 2, m), bool)
    z[1] = True
    if m < 2:
        return z
    s = np.arange(1, m)
    p = (m - 1) / (s * (m - s))
    p /= p.sum()
    for r in range(2, len(z)):
        size = int(rng.choice(s, p=p))
        z[r, rng.choice(m, size=size, replace=False)] = True
    return z


def shapley_values(z: np.ndarray, y: np.ndarray) -> np.ndarray:
    """KernelSHAP's regression for one image: rows 0 and 1 of `z`/`y` are all off and all on."""
    m = z.shape[1]
    delta = y[1] - y[0]
    if m == 1:
        return np.array([delta])
    zf = z[2:].astype(np.float64)
    target = (y[2:] - y[0]) - zf[:, -1] * delta
    a = zf[:, :-1] - zf[:, -1:]
    head = np.linalg.solve(a.T @ a + 1e-6 * np.eye(m - 1), a.T @ target)
    return np.append(head, delta - head.sum())


def kernelshap(ex: Explainer, x: np.ndarray, t: np.ndarray, c: np.ndarray) -> np.ndarray:
    """KernelSHAP on SLIC superpixels (see the module docstring)."""
    seg = superpixels(ex, x)
    sizes = seg.reshape(len(x), -1).max(axis=1) + 1
    zs = [shap_coalitions(int(m), ex.options.coalitions, ex.options.seed) for m in sizes]
    scores = _scores(ex, x, t, c, seg, zs, "kernelshap")
    out = np.empty(seg.shape, np.float32)
    for k, z in enumerate(zs):
        values = shapley_values(z, scores[k])
        out[k] = (values / np.bincount(seg[k].ravel(), minlength=len(values)))[seg[k]]
    return out
