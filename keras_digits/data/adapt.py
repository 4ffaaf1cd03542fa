"""Fitting images of any size and channel count to a model's input, in TensorFlow ops (used inside the
exported serving signature and when a run is scored on another dataset), optionally after the
MNIST-style digit normalisation (`digit_norm`).

Channels: RGB -> grey with PIL's ITU-R 601 weights (what `convert("L")` did to the training data),
grey -> RGB by repetition, alpha dropped. Size: bilinear, antialiased, rounded back onto the uint8 grid
(what PIL's BILINEAR resize did to the training data).
"""

from __future__ import annotations

import functools

import numpy as np

from keras_digits.data.digit_norm import GREY_WEIGHTS

PREPROCESS = ("auto", "digit", "none")
PREPROCESS_HELP = (
    "digit: MNIST-style digit normalisation (grey, light ink on dark, ink box scaled to 20 px, "
    "centre of mass centred in 28x28) before the model; none: the image as it is; auto (default): "
    "digit for models trained on MNIST-style centred digits (mnist), none otherwise; never applied "
    "twice to a model exported with --preprocess digit, and none is refused for such a SavedModel "
    "(its signature always normalises; for its .onnx/.tflite/.keras files auto applies it, none skips it)"
)


def wants_digit(mode: str, trained_on: str) -> bool:
    """Whether --preprocess `mode` digit-normalises for a model trained on dataset `trained_on`: digit,
    or auto when that dataset's images are MNIST-style centred digits (DatasetSpec.centred_digits)."""
    from keras_digits.data.registry import DATASETS
    from keras_digits.errors import KerasDigitsError

    if mode not in PREPROCESS:
        raise KerasDigitsError(f"--preprocess must be one of {', '.join(PREPROCESS)}, got {mode!r}")
    if mode == "auto":
        spec = DATASETS.get(str(trained_on))
        return bool(spec is not None and spec.centred_digits)
    return mode == "digit"


def to_channels(x, channels: int):
    """float (N, H, W, c) with any c -> (N, H, W, channels)."""
    import tensorflow as tf

    c = tf.shape(x)[-1]
    if channels == 1:
        weights = tf.constant(GREY_WEIGHTS, dtype=tf.float32)
        return tf.cond(
            c >= 3, lambda: tf.round(tf.reduce_sum(x[..., :3] * weights, axis=-1, keepdims=True)), lambda: x[..., :1]
        )
    if channels == 3:
        return tf.cond(c >= 3, lambda: x[..., :3], lambda: tf.tile(x[..., :1], [1, 1, 1, 3]))
    tf.debugging.assert_equal(c, channels, message=f"this model takes {channels}-channel images")
    return x


def resize_to(x, height: int, width: int):
    """float (N, h, w, C) -> (N, height, width, C), unchanged when already that size."""
    import tensorflow as tf

    h, w = tf.shape(x)[1], tf.shape(x)[2]
    same = tf.logical_and(tf.equal(h, height), tf.equal(w, width))
    return tf.cond(
        same,
        lambda: x,
        lambda: tf.clip_by_value(
            tf.round(tf.image.resize(x, [height, width], method="bilinear", antialias=True)), 0.0, 255.0
        ),
    )


def fit_to_model(images, shape: tuple[int, int, int], digit: bool = False, with_ink: bool = False):
    """uint8/float (N, H, W, C) of one size -> float32 (N, *shape) on the uint8 grid (and, with
    `with_ink`, the digit normaliser's has_ink flags, all True without it)."""
    import tensorflow as tf

    has_ink = tf.ones(tf.shape(images)[:1], tf.bool)
    if digit:
        from keras_digits.data.digit_norm import normalize_digits

        images, has_ink = normalize_digits(images)
    x = to_channels(tf.cast(images, tf.float32), shape[2])
    out = tf.ensure_shape(resize_to(x, shape[0], shape[1]), [None, *shape])
    return (out, has_ink) if with_ink else out


@functools.lru_cache(maxsize=16)
def _traced_fit(shape: tuple[int, int, int]):
    import tensorflow as tf

    return tf.function(lambda x: fit_to_model(x, shape), reduce_retracing=True)


def fit_uint8(images, shape: tuple[int, int, int]) -> np.ndarray:
    """fit_to_model on a batch of one size, through one traced graph per model shape (cached), back on the
    uint8 grid: what a model file is fed (the SavedModel does the same inside its graph)."""
    out = np.asarray(_traced_fit(tuple(int(d) for d in shape))(np.asarray(images, np.float32)))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def fit_array(
    images: np.ndarray, shape: tuple[int, int, int], digit: bool = False, batch: int = 512
) -> tuple[np.ndarray, int]:
    """fit_to_model over a NumPy array, `batch` images at a time: (uint8 (N, *shape), images without ink)."""
    import tensorflow as tf

    fn = tf.function(lambda x: fit_to_model(x, shape, digit, with_ink=True), reduce_retracing=True)
    parts, inkless = [], 0
    for i in range(0, len(images), batch):
        out, ink = fn(tf.constant(images[i : i + batch]))
        parts.append(out.numpy())
        inkless += int((~ink.numpy()).sum())
    out = np.concatenate(parts) if parts else np.zeros((0, *shape), np.float32)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8), inkless
