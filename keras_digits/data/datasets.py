"""`make_datasets(cfg, bundle)`: the training and validation tf.data pipelines a config asks for,
with the config's class balancing, augmentation and input-normalisation statistics.

Input normalisation (`--normalize dataset|imagenet`) lives in the model, not in the pipeline, so a
saved model still takes raw 0..255 pixels. Every architecture adapts its input itself (cast,
resize, ``Rescaling(1/255)``); `add_input_normalization` puts one ``keras.layers.Normalization``
layer in front of that, working in raw-pixel units: it maps ``x -> (x - 255*mean) / std``, i.e.
``255 * ((x/255 - mean) / std)``. The architecture's own ``Rescaling(1/255)`` then hands its first
layer ``(x/255 - mean) / std``: zero mean and unit variance per channel instead of 0..1. (Families
whose own input scaling is not 1/255, the pretrained ones, apply it to that standardised image as
if it were raw; ``--normalize`` is meant for the from-scratch models.) ``mean`` and ``std`` are per
channel on the 0..1 scale: ``dataset`` computes them from the TRAINING split only (never
validation or test), ``imagenet`` uses the ImageNet constants (their average for greyscale).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import tensorflow as tf

from keras_digits.data.splits import DataBundle
from keras_digits.errors import KerasDigitsError

InputStats = tuple[tuple[float, ...], tuple[float, ...]]  # (mean, std) per channel, 0..1 scale


@dataclass
class Pipelines:
    """What `model.fit` needs from the data layer (and what the model needs: `input_stats`)."""

    train: tf.data.Dataset
    val: tf.data.Dataset
    class_weight: dict[int, float] | None = None
    input_stats: InputStats | None = None

    def fit_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for model.fit."""
        kw: dict[str, Any] = {"validation_data": self.val}
        if self.class_weight is not None:
            kw["class_weight"] = self.class_weight
        return kw


def make_datasets(cfg: Any, bundle: DataBundle, replicas: int = 1) -> Pipelines:
    """Training batches (shuffled or class-balanced, augmented when asked) and validation batches
    (never augmented, never resampled). `cfg.batch_size` is per replica: with a distribution
    strategy of `replicas` replicas the pipelines yield global batches of batch_size x replicas."""
    from keras_digits.augment import augment_dataset, make_augment
    from keras_digits.data.balance import balanced_pipeline, class_weights
    from keras_digits.data.pipeline import make_pipeline

    (x_tr, y_tr), (x_va, y_va) = bundle.train, bundle.val
    augment = make_augment(cfg.augment, bundle.name, cfg.seed, channels=bundle.input_shape[-1],
                           image_shape=bundle.input_shape)
    batch = int(cfg.batch_size) * max(1, int(replicas))
    balance = getattr(cfg, "balance", "none")
    weights = None
    if balance == "resample":
        train = balanced_pipeline(x_tr, y_tr, batch, seed=cfg.seed, augment=augment)
    else:
        train = make_pipeline(x_tr, y_tr, batch, training=True, seed=cfg.seed)
        if augment is not None:
            train = augment_dataset(train, augment, cfg.seed).prefetch(tf.data.AUTOTUNE)
        if balance == "class_weight":
            weights = class_weights(y_tr, bundle.num_classes)
        elif balance not in ("none", "", None):
            raise KerasDigitsError(f"unknown balance {balance!r}; choose one of: none, class_weight, resample")
    options = tf.data.Options()
    options.deterministic = True
    train = train.with_options(options)
    val = make_pipeline(x_va, y_va, max(batch, 256)).with_options(options)
    stats = normalization_stats(getattr(cfg, "normalize", "none"), x_tr)
    return Pipelines(train=train, val=val, class_weight=weights, input_stats=stats)


# ---------------------------------------------------------------------------- input normalisation
def normalization_stats(mode: str, x_train: np.ndarray | None = None, chunk: int = 4096,
                        channels: int | None = None) -> InputStats | None:
    """(mean, std) per channel on the 0..1 scale for --normalize, or None for 'none'.

    'dataset' needs the training images (uint8 NHWC) and uses nothing else; 'imagenet' the ImageNet
    constants (for `channels` or the images' channels; their average for greyscale)."""
    if mode in ("none", "", None):
        return None
    if mode == "imagenet":
        from keras_digits.models.common import IMAGENET_MEAN, IMAGENET_STD

        channels = channels if x_train is None else x_train.shape[-1]
        if channels == 1:
            return (float(np.mean(IMAGENET_MEAN)),), (float(np.mean(IMAGENET_STD)),)
        return tuple(IMAGENET_MEAN), tuple(IMAGENET_STD)
    if mode != "dataset":
        raise KerasDigitsError(f"unknown normalize {mode!r}; choose one of: none, dataset, imagenet")
    if x_train is None or len(x_train) == 0:
        raise KerasDigitsError("--normalize dataset needs the training split's images")
    c = x_train.shape[-1]
    total = np.zeros(c)
    total_sq = np.zeros(c)
    count = 0
    for i in range(0, len(x_train), chunk):  # float64 in chunks: exact enough, small memory
        part = x_train[i:i + chunk].reshape(-1, c).astype(np.float64) / 255.0
        total += part.sum(axis=0)
        total_sq += (part * part).sum(axis=0)
        count += part.shape[0]
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean * mean, 0.0))
    std = np.maximum(std, 1e-3)  # a constant channel would divide by zero
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def add_input_normalization(model, stats: InputStats):
    """The same network with a raw-pixel Normalization layer ('input_normalize') right after its input.

    The result is one flat functional model (rebuilt from config, weights copied), so it saves, loads
    and exposes its layers exactly like the original; see the module docstring for the maths."""
    import keras

    mean, std = (np.asarray(v, dtype=np.float64) for v in stats)
    norm = keras.layers.Normalization(mean=(255.0 * mean).tolist(), variance=(std * std).tolist(),
                                      name="input_normalize")
    inputs = keras.Input(shape=model.inputs[0].shape[1:], name=model.inputs[0].name)
    wired = keras.Model(inputs, model.call(norm(inputs)), name=model.name)
    fresh = keras.Model.from_config(wired.get_config())
    fresh.set_weights(wired.get_weights())
    return fresh
