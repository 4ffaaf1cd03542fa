"""`make_datasets(cfg, bundle)`: the training and validation tf.data pipelines a config asks for,
with the config's class balancing, augmentation and, for `--normalize dataset`, the training split's
per-channel statistics (mean, std on the 0..1 scale, from the TRAINING split only, never validation
or test). The normalisation itself is a layer inside the model (keras_digits.models.normalize), so
a saved model still takes raw 0..255 pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import tensorflow as tf

from keras_digits.data.splits import DataBundle
from keras_digits.errors import KerasDigitsError

InputStats = tuple[tuple[float, ...], tuple[float, ...]]  # (mean, std) per channel, 0..1 scale


class SampledImages:
    """Rows `idx` of `images`, read a slice at a time (`sample[a:b]`), so a memory-mapped split stays on
    disk; within a slice the rows come in file order (a batch's statistics do not depend on its order)."""

    def __init__(self, images: Any, idx: np.ndarray):
        self.images, self.idx = images, np.asarray(idx, np.int64)

    def __len__(self) -> int:
        return len(self.idx)

    def __getitem__(self, key: slice) -> np.ndarray:
        return np.asarray(self.images[np.sort(self.idx[key])])


@dataclass
class Pipelines:
    """What `model.fit` needs from the data layer (and what the model needs: `input_stats`)."""

    train: tf.data.Dataset
    val: tf.data.Dataset
    class_weight: dict[int, float] | None = None
    input_stats: InputStats | None = None
    epoch: Any = None  # the tf.Variable `train`'s randomness is keyed on (pipeline.epoch_variable), if any
    val_labels: np.ndarray | None = None  # `val`'s labels in order (for metrics Keras does not compute)
    n_train: int | None = None  # training images (before any resampling)
    train_images: Any = None  # the training split's images (uint8 NHWC, maybe memory-mapped), unaugmented
    val_images: Any = None  # the validation split's images, in `val`'s order
    seed: int = 0

    def _sample(self, images: Any, count: int, stream: int) -> np.ndarray:
        """`count` random row indices of `images` (all of them if fewer), fixed by the seed and `stream`."""
        n = 0 if images is None else len(images)
        return np.random.default_rng([self.seed, stream]).permutation(n)[: max(0, int(count))]

    def calibration_images(self, count: int) -> SampledImages:
        """A fixed, seeded random sample of `count` training images, unaugmented, in random order (for
        BatchNorm statistics: batches mix classes as training's do), read a slice at a time."""
        return SampledImages(self.train_images, self._sample(self.train_images, count, 7919))

    def check_sample(self, count: int) -> tuple[np.ndarray, np.ndarray]:
        """A fixed, seeded random sample of `count` validation images and their labels (the collapse check)."""
        idx = np.sort(self._sample(self.val_images, count, 104729))
        if not len(idx):
            return np.zeros((0,), np.uint8), np.zeros((0,), np.int64)
        return np.asarray(self.val_images[idx]), np.asarray(self.val_labels)[idx]

    @property
    def steps_per_epoch(self) -> int | None:
        """Training batches per epoch, where the pipeline knows it."""
        n = int(self.train.cardinality())
        return n if n > 0 else None

    def fit_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for model.fit."""
        kw: dict[str, Any] = {"validation_data": self.val}
        if self.class_weight is not None:
            kw["class_weight"] = self.class_weight
        return kw


def make_datasets(cfg: Any, bundle: DataBundle, replicas: int = 1, epoch: Any = None) -> Pipelines:
    """Training batches (shuffled or class-balanced, augmented when asked) and validation batches
    (never augmented, never resampled). `cfg.batch_size` is per replica: with a distribution
    strategy of `replicas` replicas the pipelines yield global batches of batch_size x replicas.

    With `epoch` (`keras_digits.data.pipeline.epoch_variable()`, set by the caller at each epoch's
    start) the training order, resampling and augmentation are a function of (seed, epoch), so a
    resumed run continues them; without it they change with every pass over the dataset."""
    from keras_digits.data.augment import augment_dataset, make_augment
    from keras_digits.data.balance import balanced_pipeline, class_weights
    from keras_digits.data.pipeline import make_pipeline, pipeline_options

    (x_tr, y_tr), (x_va, y_va) = bundle.train, bundle.val
    augment = make_augment(
        cfg.augment, bundle.name, cfg.seed, channels=bundle.input_shape[-1], image_shape=bundle.input_shape
    )
    batch = int(cfg.batch_size) * max(1, int(replicas))
    balance = cfg.balance
    weights = None
    if balance == "resample":
        train = balanced_pipeline(x_tr, y_tr, batch, seed=cfg.seed, augment=augment, epoch=epoch)
    else:
        train = make_pipeline(x_tr, y_tr, batch, training=True, seed=cfg.seed, epoch=epoch)
        if augment is not None:
            train = augment_dataset(train, augment, cfg.seed, epoch).prefetch(tf.data.AUTOTUNE)
        if balance == "class_weight":
            weights = class_weights(y_tr, bundle.num_classes)
        elif balance not in ("none", "", None):
            raise KerasDigitsError(f"unknown balance {balance!r}; choose one of: none, class_weight, resample")
    # deterministic, and no autotuning (its thread delayed every epoch's start); here for the training
    # pipeline as a whole (augmentation zips in a seed stream), make_pipeline sets them on its own
    train = train.with_options(pipeline_options())
    val = make_pipeline(x_va, y_va, max(batch, 256))
    stats = normalization_stats(cfg.normalize, x_tr)
    return Pipelines(
        train=train,
        val=val,
        class_weight=weights,
        input_stats=stats,
        epoch=epoch,
        val_labels=np.asarray(y_va),
        n_train=len(y_tr),
        train_images=x_tr,
        val_images=x_va,
        seed=int(cfg.seed),
    )


# ---------------------------------------------------------------------------- input normalisation
def normalization_stats(mode: str, x_train: np.ndarray | None = None, chunk_values: int = 1 << 22) -> InputStats | None:
    """(mean, std) per channel on the 0..1 scale for `--normalize dataset`, from the training images
    (uint8 NHWC) and nothing else; None for the other modes ('imagenet' uses the model's constants)."""
    if mode != "dataset":
        return None
    if x_train is None or len(x_train) == 0:
        raise KerasDigitsError("--normalize dataset needs the training split's images")
    c = x_train.shape[-1]
    total = np.zeros(c)
    total_sq = np.zeros(c)
    count = 0
    chunk = max(1, chunk_values // max(1, int(np.prod(x_train.shape[1:]))))  # ~32 MB of float64 at a time
    for i in range(0, len(x_train), chunk):  # float64 in chunks: exact enough, small memory
        part = x_train[i : i + chunk].reshape(-1, c).astype(np.float64) / 255.0
        total += part.sum(axis=0)
        total_sq += (part * part).sum(axis=0)
        count += part.shape[0]
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean * mean, 0.0))
    std = np.maximum(std, 1e-3)  # a constant channel would divide by zero
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)
