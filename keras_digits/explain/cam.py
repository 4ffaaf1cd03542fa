"""Class activation maps on the target layer: Grad-CAM, Grad-CAM++, Score-CAM, LayerCAM, and Guided Grad-CAM.

Each returns (N, H, W) float32 at the input resolution: the map on the target layer's grid, ReLU'd,
upsampled bilinearly. Written on tf.GradientTape (see docs/explanations.md for why no library).
"""

from __future__ import annotations

import numpy as np

from keras_digits.explain.core import Explainer, resize_maps


def gradcam(ex: Explainer, x: np.ndarray, t: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Selvaraju et al. 2017: weights = spatial mean of d score / d A^k; map = ReLU(sum_k w_k A^k)."""
    ex.require_layer("gradcam")
    feats, grads = ex.feature_gradients(x, t, c)
    weights = grads.mean(axis=(1, 2), keepdims=True)
    cam = np.maximum((weights * feats).sum(axis=-1), 0.0)
    return resize_maps(cam, x.shape[1:3])


def gradcampp(ex: Explainer, x: np.ndarray, t: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Chattopadhay et al. 2018, closed form for an exponential of the score (the exp factor cancels):
    alpha = g^2 / (2 g^2 + sum_ij A * g^3); w_k = sum_ij alpha * ReLU(g); map = ReLU(sum_k w_k A^k)."""
    ex.require_layer("gradcampp")
    feats, grads = ex.feature_gradients(x, t, c)
    g2, g3 = grads**2, grads**3
    denom = 2.0 * g2 + feats.sum(axis=(1, 2), keepdims=True) * g3
    alpha = g2 / np.where(denom != 0.0, denom, 1.0)
    weights = (alpha * np.maximum(grads, 0.0)).sum(axis=(1, 2), keepdims=True)
    cam = np.maximum((weights * feats).sum(axis=-1), 0.0)
    return resize_maps(cam, x.shape[1:3])


def _channel_choice(feats: np.ndarray, limit: int) -> np.ndarray:
    """(N, K') indices of the channels Score-CAM uses per image: all, or the `limit` with the largest
    spatial variance (the "Faster Score-CAM" shortcut: flat channels make flat masks)."""
    k = feats.shape[-1]
    if limit <= 0 or limit >= k:
        return np.broadcast_to(np.arange(k), (len(feats), k)).copy()
    var = feats.reshape(len(feats), -1, k).var(axis=1)
    return np.argsort(-var, axis=1, kind="stable")[:, :limit]


def scorecam(ex: Explainer, x: np.ndarray, t: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Wang et al. 2020: each channel, upsampled and scaled to [0, 1], masks the input (x * M_k); its
    weight is the probability score of the masked image; map = ReLU(sum_k w_k A^k). Gradient-free."""
    ex.require_layer("scorecam")
    feats = ex.features(x)
    chosen = _channel_choice(feats, ex.options.scorecam_channels)
    n, k = chosen.shape
    size = x.shape[1:3]

    def make(i: np.ndarray, v: np.ndarray) -> np.ndarray:
        act = feats[i, :, :, chosen[i, v]]  # (B, h, w)
        up = resize_maps(act, size)
        lo = up.min(axis=(1, 2), keepdims=True)
        hi = up.max(axis=(1, 2), keepdims=True)
        mask = np.where(hi > lo, (up - lo) / np.where(hi > lo, hi - lo, 1.0), 0.0)
        return (ex.low + (x[i] - ex.low) * mask[..., None]).astype(np.float32)

    weights = ex.pair_scores(x, t, c, make, k, label="scorecam")  # (N, K')
    picked = np.take_along_axis(feats, chosen[:, None, None, :], axis=-1)  # (N, h, w, K')
    flat = np.array([(hi > lo) for hi, lo in zip(picked.max(axis=(1, 2)), picked.min(axis=(1, 2)))])
    cam = np.maximum((picked * (weights * flat)[:, None, None, :]).sum(axis=-1), 0.0)
    return resize_maps(cam, size)


def layercam(ex: Explainer, x: np.ndarray, t: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Jiang et al. 2021: each location weighted by its own positive gradient, map = ReLU(sum_k ReLU(g^k) A^k)
    (Grad-CAM averages the gradient over the map first)."""
    ex.require_layer("layercam")
    feats, grads = ex.feature_gradients(x, t, c)
    cam = np.maximum((np.maximum(grads, 0.0) * feats).sum(axis=-1), 0.0)
    return resize_maps(cam, x.shape[1:3])


def guided_gradcam(ex: Explainer, x: np.ndarray, t: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Selvaraju et al. 2017: Guided Backpropagation times the upsampled Grad-CAM map (fine detail where the
    class evidence is)."""
    from keras_digits.explain.gradients import guided_backprop

    ex.require_layer("guided_gradcam")
    return (guided_backprop(ex, x, t, c) * gradcam(ex, x, t, c)).astype(np.float32)
