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
    noise: float = 0.15  # SmoothGrad & co.: noise std as a fraction of the input range (paper: 10-20%)
    masks: int = 1000  # RISE: random masks per image
    cells: int = 7  # RISE: mask grid (cells x cells), as in Petsiuk et al.
    keep: float = 0.5  # RISE: probability a cell is kept
    patch: int | None = None  # occlusion: patch side (default: about a seventh of the image side)
    stride: int | None = None  # occlusion: stride (default: half the patch)
    scorecam_channels: int = 256  # Score-CAM: channels used (largest activation variance first); 0 = all
    segments: int = 50  # LIME / KernelSHAP: superpixels per image (SLIC's target; it may make fewer)
    coalitions: int = 1000  # LIME / KernelSHAP: perturbed images per image (lime's default for images)
    seed: int = 0
    value_range: tuple[float, float] = (0.0, 255.0)  # the model's input range: black is the low end
    background: np.ndarray | None = None  # GradientSHAP baselines (B, H, W, C); None: black and blurred images
    head: str = "auto"  # auto (from the last layer), probabilities or logits (what the model outputs)


HEADS = ("auto", "probabilities", "logits")


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
        check_model(model)
        self.input_shape = tuple(int(d) for d in model.inputs[0].shape[1:])
        self.num_classes = int(model.outputs[0].shape[-1])
        low, high = (float(v) for v in self.options.value_range)
        if not high > low:
            raise KerasDigitsError(f"the input value range must be low < high, got {low}..{high}")
        self.low, self.high, self.span = low, high, high - low
        self.layer: LayerInfo | None = resolve_layer(model, layer)
        if self.options.head not in HEADS:
            raise KerasDigitsError(f"head must be one of {', '.join(HEADS)}, got {self.options.head!r}")
        self._raw = self.options.head != "auto"  # the model's own output is what the head reads
        self._input_model, self.head, self.head_kind = rewire(model, None, raw_output=self._raw)
        if self._raw:
            self.head_kind = "logits" if self.options.head == "logits" else "log"
        self._spec = None
        self._modified: dict = {}
        self._tap = rewire(model, self.layer.path, raw_output=self._raw)[0] if self.layer is not None else None
        self.progress: Callable[[str, int], object] | None = None  # (label, total) -> object with update/close
        self._spec = [
            tf.TensorSpec((None, *self.input_shape), tf.float32),
            tf.TensorSpec((None,), tf.int32),
            tf.TensorSpec((None,), tf.int32),
        ]
        if self.options.noise < 0:
            raise KerasDigitsError(f"noise must be 0 or more, got {self.options.noise}")
        bg = self.options.background
        if bg is not None and (np.ndim(bg) != 4 or tuple(np.shape(bg)[1:]) != self.input_shape or not len(bg)):
            raise KerasDigitsError(
                f"background must be images (B, {', '.join(map(str, self.input_shape))}), got shape {np.shape(bg)}"
            )
        self._trace()

    def _trace(self) -> None:
        """The traced primitives; made again when the head's reading changes (check_head)."""
        import tensorflow as tf

        spec = self._spec
        self._modified = {}
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
        if self.head_kind in ("activation", "logits"):
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
        out = [self._logits_fn(np.asarray(x[s], np.float32)).numpy() for s in self._chunks(len(x))]
        return np.concatenate(out) if out else np.zeros((0, self.num_classes), np.float32)

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

    def check_head(self, x: np.ndarray) -> str | None:
        """With head "auto" and a last layer that is not a recognisable softmax or linear Dense (a SavedModel, a
        Lambda): read its outputs on `x` as probabilities when they are (non-negative rows summing to 1),
        else as logits. Returns a note when it switched to logits."""
        if self.options.head != "auto" or self.head_kind != "log" or not len(x):
            return None
        raw = np.concatenate(
            [np.asarray(self._input_model(np.asarray(x[s], np.float32))) for s in self._chunks(len(x))]
        )
        if (raw >= -1e-6).all() and np.allclose(raw.sum(axis=1), 1.0, atol=1e-3):
            return None
        self.head_kind = "logits"
        self._trace()  # functions traced with the log head would keep it
        return "the model's outputs are not probabilities (rows do not sum to 1): read as logits"

    def modified_gradients(self, x: np.ndarray, t: np.ndarray, c: np.ndarray, rule: str, reference=None) -> np.ndarray:
        """d logit-score / d input through a copy of the model whose activations backpropagate by `rule`
        (explain.modified: "guided" or "rescale"); "rescale" feeds each image with its `reference` image."""
        import tensorflow as tf

        if rule == "rescale" and reference is None:
            raise ValueError("the rescale rule needs a reference image for every image")
        if rule not in self._modified:
            from keras_digits.explain.modified import rewire_with_rule

            net = rewire_with_rule(self.model, rule, raw_output=self._raw)
            probe = np.random.default_rng(0).uniform(self.low, self.high, (2, *self.input_shape)).astype(np.float32)
            if not np.allclose(
                self._head(net(probe, training=False)).numpy(), self.logits(probe), rtol=1e-3, atol=1e-3
            ):
                raise KerasDigitsError(
                    f"the {rule} rule changed {self.model.name}'s forward pass (a layer uses its activation "
                    "inside, not as its last step): Guided Backpropagation and DeepLIFT cannot explain it"
                )

            def impl(xb, tb, cb):
                with tf.GradientTape() as tape:
                    tape.watch(xb)
                    score = self.logit_score(self._head(net(xb, training=False)), tb, cb)
                return tape.gradient(score, xb)

            self._modified[rule] = tf.function(impl, input_signature=self._spec, reduce_retracing=True)
        fn = self._modified[rule]
        out = []
        size = max(1, int(self.options.batch_size) // (2 if reference is not None else 1))
        for start in range(0, len(x), size):
            s = slice(start, min(len(x), start + size))
            xb = np.asarray(x[s], np.float32)
            if reference is None:
                out.append(fn(xb, t[s], c[s]).numpy())
                continue
            both = np.concatenate([xb, np.asarray(reference[s], np.float32)])
            g = fn(both, np.concatenate([t[s], t[s]]), np.concatenate([c[s], c[s]])).numpy()
            out.append(g[: len(xb)])
        return np.concatenate(out) if out else np.zeros((0, *self.input_shape), np.float32)

    def black(self, x: np.ndarray) -> np.ndarray:
        """Images of the low end of the input range, shaped like `x` (the black baseline)."""
        return np.full(np.shape(x), self.low, np.float32)

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
        with_variant: bool = False,
    ) -> np.ndarray:
        """fn over every (image i, variant v) pair, `batch_size` pairs per call: `make(i, v)` builds the
        batch's inputs (index arrays in, (B, ...) out), `fn(inputs, i)` returns one value per pair.
        Returns (n_images, n_variants, ...); with `weights` (one per variant) the weighted sum over the
        variants, (n_images, ...), accumulated batch by batch (memory independent of n_variants).
        `with_variant`: fn is called as fn(inputs, i, v)."""
        total = n_images * n_variants
        bar = self.progress(label, total) if self.progress and label else None
        out = None
        for s in self._chunks(total):
            k = np.arange(s.start, s.stop)
            i, v = k // n_variants, k % n_variants
            values = np.asarray(fn(make(i, v), i, v) if with_variant else fn(make(i, v), i))
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

    def logit_scores(self, x: np.ndarray, t: np.ndarray, c: np.ndarray) -> np.ndarray:
        """Logit scores (logit[t], or logit[t] - logit[c] with a contrast), (N,)."""
        z = self.logits(x).astype(np.float64)
        rows = np.arange(len(z))
        return np.where(c >= 0, z[rows, t] - z[rows, np.maximum(c, 0)], z[rows, t])

    def pair_scores(self, x, t, c, make, n_variants: int, label: str = "", logits: bool = False) -> np.ndarray:
        """Probability (with `logits`: logit) scores of `n_variants` perturbed copies of each image, (N, n_variants)."""
        score = self.logit_scores if logits else self.scores
        return self.map_pairs(len(x), n_variants, make, lambda xb, i: score(xb, t[i], c[i]), label)


def check_model(model) -> None:
    """One line for a model the explainers cannot take: not a graph of layers, not one image input, not a
    classifier's (N, classes) output."""
    if not getattr(model, "inputs", None) or not getattr(model, "outputs", None):
        raise KerasDigitsError(
            f"{getattr(model, 'name', 'the model')} has no input/output graph (a subclassed model that was never "
            "built on symbolic inputs); wrap it: keras.Model(inputs, model(inputs))"
        )
    if len(model.inputs) != 1:
        raise KerasDigitsError(f"explanations need a model with one image input; this one has {len(model.inputs)}")
    shape = tuple(model.inputs[0].shape[1:])
    if len(shape) != 3 or not all(isinstance(d, int) for d in shape):
        raise KerasDigitsError(
            f"explanations need a fixed image input (height, width, channels); the model takes {shape}"
        )
    out = tuple(model.outputs[0].shape[1:])
    if len(model.outputs) != 1 or len(out) != 1 or not isinstance(out[0], int) or out[0] < 2:
        raise KerasDigitsError(
            "explanations need a classifier with one (batch, classes) output of 2 or more classes; this model outputs "
            + ", ".join(str(tuple(o.shape)) for o in model.outputs)
        )


def resize_maps(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(N, h, w) -> (N, H, W) by bilinear interpolation (half-pixel centres, as tf.image.resize)."""
    import tensorflow as tf

    if maps.shape[1:3] == tuple(size):
        return maps.astype(np.float32)
    return tf.image.resize(maps[..., None].astype(np.float32), size, method="bilinear").numpy()[..., 0]
