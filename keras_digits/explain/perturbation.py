"""Perturbation methods, gradient-free: occlusion and RISE. Both read the probability score.

Occluded or masked pixels are set to black (the low end of the input range: 0 for this project's models,
the value they see for MNIST background).
"""

from __future__ import annotations

import numpy as np

from keras_digits.explain.core import Explainer


def occlusion_geometry(ex: Explainer) -> tuple[int, int, list[tuple[int, int]]]:
    """(patch, stride, top-left corners) covering the image; the last row/column is flush with the edge."""
    h, w = ex.input_shape[:2]
    patch = ex.options.patch or max(2, round(min(h, w) / 7))
    patch = min(patch, h, w)
    stride = ex.options.stride or max(1, patch // 2)

    def starts(side: int) -> list[int]:
        out = list(range(0, side - patch + 1, stride))
        if out[-1] != side - patch:
            out.append(side - patch)
        return out

    return patch, stride, [(r, q) for r in starts(h) for q in starts(w)]


def occlusion(ex: Explainer, x: np.ndarray, t: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Zeiler & Fergus 2014: slide a black patch; a pixel's value is the mean drop of the score over
    the patches that cover it."""
    patch, _, corners = occlusion_geometry(ex)
    h, w = ex.input_shape[:2]
    base = ex.scores(x, t, c)

    def make(i: np.ndarray, v: np.ndarray) -> np.ndarray:
        out = x[i].astype(np.float32, copy=True)
        for j, k in enumerate(v):
            r, q = corners[k]
            out[j, r : r + patch, q : q + patch, :] = ex.low
        return out

    occluded = ex.pair_scores(x, t, c, make, len(corners), label="occlusion")  # (N, P)
    total = np.zeros((len(x), h, w), np.float32)
    count = np.zeros((h, w), np.float32)
    for k, (r, q) in enumerate(corners):
        total[:, r : r + patch, q : q + patch] += (base - occluded[:, k])[:, None, None]
        count[r : r + patch, q : q + patch] += 1.0
    return total / np.maximum(count, 1.0)


def rise_masks(ex: Explainer, index: np.ndarray) -> np.ndarray:
    """RISE masks number `index` (Petsiuk et al. 2018): a cells x cells grid of cells kept with
    probability `keep`, upsampled bilinearly to (cells + 1) x the cell size and cropped at a random
    shift. Each mask is drawn from its own seed (the same masks for every image and batch)."""
    import tensorflow as tf

    o = ex.options
    h, w = ex.input_shape[:2]
    cells = max(2, min(o.cells, h, w))
    ch, cw = int(np.ceil(h / cells)), int(np.ceil(w / cells))
    grids, shifts = [], []
    for k in index:
        rng = np.random.default_rng([o.seed, 7, int(k)])
        grids.append((rng.random((cells, cells)) < o.keep).astype(np.float32))
        shifts.append((int(rng.integers(0, ch)), int(rng.integers(0, cw))))
    up = tf.image.resize(np.stack(grids)[..., None], ((cells + 1) * ch, (cells + 1) * cw), method="bilinear").numpy()
    return np.stack([up[j, dy : dy + h, dx : dx + w, 0] for j, (dy, dx) in enumerate(shifts)]).astype(np.float32)


def rise(ex: Explainer, x: np.ndarray, t: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Petsiuk et al. 2018: the score-weighted mean of `masks` random masks, sum_i s(x * M_i) M_i / (N p)."""
    n = max(1, ex.options.masks)
    h, w = ex.input_shape[:2]
    out = np.zeros((len(x), h, w), np.float64)
    block = 256  # masks generated and applied a block at a time: memory bounded by the block, not by n
    for start in range(0, n, block):
        idx = np.arange(start, min(n, start + block))
        masks = rise_masks(ex, idx)
        scores = ex.pair_scores(
            x,
            t,
            c,
            lambda i, v, masks=masks: ex.low + (x[i] - ex.low) * masks[v][..., None],
            len(idx),
            label=f"rise {start + len(idx)}/{n}" if n > block else "rise",
        )
        out += np.tensordot(scores, masks, axes=1)
    return (out / (n * ex.options.keep)).astype(np.float32)
