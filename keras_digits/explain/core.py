"""The explainer: a trained model rewired for attribution, its target scores, and batched primitives
(gradients with respect to the input or the target layer, forward scores) that every method is built on.

Targets. Each image has a target class t and optionally a contrast class c (-1: none). Gradient
methods differentiate the *logit* score, ``logit[t]`` or ``logit[t] - logit[c]`` ("what makes this a t
rather than a c"). Perturbation methods and the faithfulness metrics read the *probability* score,
``softmax[t]`` or, with a contrast, ``sigmoid(logit[t] - logit[c])`` (the probability of t among {t, c}).

Batches. Every primitive takes at most `batch_size` model inputs per call; the methods that evaluate
many variants of an image (noise samples, path steps, masks, occluded copies, channel masks) feed
(image, variant) pairs through `Explainer.map_pairs`, so memory stays bounded whatever the sample count.
Variants are indexed the same way for every image, so a batch of images and the images one by one give
the same maps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from keras_digits.errors import KerasDigitsError
from keras_digits.explain.graph import LayerInfo, resolve_layer, rewire


@dataclass
class Options:
    """Method settings (the CLI's flags); defaults follow the methods' papers where they give one."""

    batch_size: int = 64  # model inputs per forward/backward call
    steps: int = 32  # Integrated Gradients: points on the path (trapezoid rule)
    samples: int = 25  # SmoothGrad: noisy copies per image (Smilkov et al. 2017 use 50; 25 is close)
    noise: float = 0.15  # SmoothGrad: noise std as a fraction of the 0..255 pixel range (paper: 10-20%)
    masks: int = 1000  # RISE: random masks per image
    cells: int = 7  # RISE: mask grid (cells x cells), as in Petsiuk et al.
    keep: float = 0.5  # RISE: probability a cell is kept
    patch: int | None = None  # occlusion: patch side (default: about a seventh of the image side)
    stride: int | None = None  # occlusion: stride (default: half the patch)
    scorecam_channels: int = 256  # Score-CAM: channels used (largest activation variance first); 0 = all
    seed: int = 0


def blur(x: np.ndarray) -> np.ndarray:
    """A strong Gaussian blur of (N, H, W, C) images (sigma a tenth of the side, at least 1 pixel): the
    blurred IG baseline and the insertion metric's start."""
    from scipy.ndimage import gaussian_filter

    sigma = max(1.0, min(x.shape[1:3]) / 10.0)
    return gaussian_filter(np.asarray(x, np.float32), sigma=(0, sigma, sigma, 0), mode="nearest").astype(np.float32)


class Explainer:
    """A model ready to be explained: the target layer (for CAM methods) and batched primitives."""

    def __init__(self, model, layer: str | None = None, options: Options | None = None):
        import tensorflow as tf

        self.model = model
        self.options = options or Options()
        self.input_shape = tuple(int(d) for d in model.inputs[0].shape[1:])
        if len(self.input_shape) != 3:
            raise KerasDigitsError(f"explanations need image inputs (H, W, C); the model takes {self.input_shape}")
        self.num_classes = int(model.outputs[0].shape[-1])
        self.layer: LayerInfo | None = resolve_layer(model, layer)
        self._input_model, self.head, self.head_kind = rewire(model, None)
        self._tap = rewire(model, self.layer.path)[0] if self.layer is not None else None
        self.progress: Callable[[str, int], object] | None = None  # (label, total) -> object with update/close
        spec = [
            tf.TensorSpec((None, *self.input_shape), tf.float32),
            tf.TensorSpec((None,), tf.int32),
            tf.TensorSpec((None,), tf.int32),
        ]
        self._input_grads = tf.function(self._input_grads_impl, input_signature=spec, reduce_retracing=True)
        self._prob_scores = tf.function(self._prob_scores_impl, input_signature=spec, reduce_retracing=True)
        self._logits_fn = tf.function(self._logits_of, input_signature=spec[:1], reduce_retracing=True)
        if self._tap is not None:
            self._feature_grads = tf.function(self._feature_grads_impl, input_signature=spec, reduce_retracing=True)
            self._features = tf.function(lambda x: self._tap(x, training=False)[0], input_signature=spec[:1])

    # ------------------------------------------------------------------ scores
    def _head(self, pre):
        """Logits in float32 (a mixed-precision model's last layer input is float16)."""
        import tensorflow as tf

        pre = tf.cast(pre, tf.float32)
        if self.head_kind == "dense":
            out = tf.matmul(pre, tf.cast(self.head.kernel, tf.float32))
            return out + tf.cast(self.head.bias, tf.float32) if self.head.use_bias else out
        if self.head_kind == "activation":
            return pre
        return tf.math.log(tf.maximum(pre, 1e-30))

    def _logits_of(self, x):
        return self._head(self._input_model(x, training=False))

    @staticmethod
    def logit_score(logits, t, c):
        import tensorflow as tf

        lt = tf.gather(logits, t, batch_dims=1)
        lc = tf.gather(logits, tf.maximum(c, 0), batch_dims=1)
        return tf.where(c >= 0, lt - lc, lt)

    @staticmethod
    def prob_score(logits, t, c):
        """In float64: a confident model's softmax is exactly 1.0 in float32 once its margin passes ~17,
        which would blind the perturbation methods; float64 resolves margins up to ~36."""
        import tensorflow as tf

        logits = tf.cast(logits, tf.float64)
        lt = tf.gather(logits, t, batch_dims=1)
        lc = tf.gather(logits, tf.maximum(c, 0), batch_dims=1)
        pt = tf.gather(tf.nn.softmax(logits), t, batch_dims=1)
        return tf.where(c >= 0, tf.sigmoid(lt - lc), pt)

    # ------------------------------------------------------------------ traced primitives
    def _input_grads_impl(self, x, t, c):
        import tensorflow as tf

        with tf.GradientTape() as tape:
            tape.watch(x)
            score = self.logit_score(self._logits_of(x), t, c)
        return tape.gradient(score, x)

    def _feature_grads_impl(self, x, t, c):
        import tensorflow as tf

        with tf.GradientTape() as tape:
            tape.watch(x)  # so the feature map is on the tape even when no weight lies before it
            feature, pre = self._tap(x, training=False)
            score = self.logit_score(self._head(pre), t, c)
        return feature, tape.gradient(score, feature)

    def _prob_scores_impl(self, x, t, c):
        return self.prob_score(self._logits_of(x), t, c)  # float64 (see prob_score)

    # ------------------------------------------------------------------ batched numpy API
    def _chunks(self, n: int):
        size = max(1, int(self.options.batch_size))
        for start in range(0, n, size):
            yield slice(start, min(n, start + size))

    def logits(self, x: np.ndarray) -> np.ndarray:
        """Logits (or log-probabilities, see graph.rewire) for (N, H, W, C) images."""
        return np.concatenate([self._logits_fn(np.asarray(x[s], np.float32)).numpy() for s in self._chunks(len(x))])

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Softmax probabilities (from the logits: the model's own output)."""
        z = self.logits(x)
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    def input_gradients(self, x: np.ndarray, t: np.ndarray, c: np.ndarray) -> np.ndarray:
        """d logit-score / d input, (N, H, W, C), in raw-pixel units."""
        out = [self._input_grads(np.asarray(x[s], np.float32), t[s], c[s]).numpy() for s in self._chunks(len(x))]
        return np.concatenate(out) if out else np.zeros((0, *self.input_shape), np.float32)

    def scores(self, x: np.ndarray, t: np.ndarray, c: np.ndarray) -> np.ndarray:
        """Probability scores, (N,)."""
        out = [self._prob_scores(np.asarray(x[s], np.float32), t[s], c[s]).numpy() for s in self._chunks(len(x))]
        return np.concatenate(out) if out else np.zeros((0,), np.float64)

    def require_layer(self, method: str) -> None:
        if self._tap is None:
            raise KerasDigitsError(
                f"{method} needs a spatial feature map and {self.model.name} has none (it "
                "flattens its input first); use saliency, smoothgrad, ig, ig_blur, occlusion "
                "or rise"
            )

    def feature_gradients(self, x: np.ndarray, t: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(target layer's activations, their gradients of the logit score), each (N, h, w, k)."""
        feats, grads = [], []
        for s in self._chunks(len(x)):
            a, g = self._feature_grads(np.asarray(x[s], np.float32), t[s], c[s])
            feats.append(a.numpy())
            grads.append(g.numpy())
        return np.concatenate(feats), np.concatenate(grads)

    def features(self, x: np.ndarray) -> np.ndarray:
        return np.concatenate([self._features(np.asarray(x[s], np.float32)).numpy() for s in self._chunks(len(x))])

    def map_pairs(
        self,
        n_images: int,
        n_variants: int,
        make: Callable[[np.ndarray, np.ndarray], np.ndarray],
        fn: Callable[[np.ndarray, np.ndarray], np.ndarray],
        label: str = "",
        weights: np.ndarray | None = None,
    ) -> np.ndarray:
        """fn over every (image i, variant v) pair, `batch_size` pairs per call: `make(i, v)` builds the
        batch's inputs (index arrays in, (B, ...) out), `fn(inputs, i)` returns one value per pair.
        Returns (n_images, n_variants, ...); with `weights` (one per variant) the weighted sum over the
        variants, (n_images, ...), accumulated batch by batch (memory independent of n_variants)."""
        total = n_images * n_variants
        bar = self.progress(label, total) if self.progress and label else None
        out = None
        for s in self._chunks(total):
            k = np.arange(s.start, s.stop)
            i, v = k // n_variants, k % n_variants
            values = np.asarray(fn(make(i, v), i))
            if weights is not None:
                if out is None:
                    out = np.zeros((n_images, *values.shape[1:]), np.float64)
                np.add.at(out, i, np.asarray(weights)[v].reshape(-1, *[1] * (values.ndim - 1)) * values)
            else:
                if out is None:
                    out = np.zeros((total, *values.shape[1:]), values.dtype)
                out[s] = values
            if bar is not None:
                bar.update(len(k))
        if bar is not None:
            bar.close()
        if out is None:
            return np.zeros((n_images,) if weights is not None else (n_images, n_variants), np.float32)
        return out if weights is not None else out.reshape(n_images, n_variants, *out.shape[1:])

    def pair_scores(self, x, t, c, make, n_variants: int, label: str = "") -> np.ndarray:
        """Probability scores of `n_variants` perturbed copies of each image: (N, n_variants)."""
        return self.map_pairs(len(x), n_variants, make, lambda xb, i: self.scores(xb, t[i], c[i]), label)


def resize_maps(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(N, h, w) -> (N, H, W) by bilinear interpolation (half-pixel centres, as tf.image.resize)."""
    import tensorflow as tf

    if maps.shape[1:3] == tuple(size):
        return maps.astype(np.float32)
    return tf.image.resize(maps[..., None].astype(np.float32), size, method="bilinear").numpy()[..., 0]
