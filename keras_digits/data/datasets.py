"""`make_datasets(cfg, bundle)`: the training and validation tf.data pipelines a config asks for."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import tensorflow as tf

from keras_digits.data.splits import DataBundle


@dataclass
class Pipelines:
    """What `model.fit` needs from the data layer."""

    train: tf.data.Dataset
    val: tf.data.Dataset
    class_weight: dict[int, float] | None = None

    def fit_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for model.fit."""
        kw: dict[str, Any] = {"validation_data": self.val}
        if self.class_weight is not None:
            kw["class_weight"] = self.class_weight
        return kw


def make_datasets(cfg: Any, bundle: DataBundle) -> Pipelines:
    """Training batches (shuffled, augmented when asked) and validation batches (never augmented)."""
    from keras_digits.augment import make_augment
    from keras_digits.data.pipeline import make_pipeline

    augment = make_augment(cfg.augment, bundle.name, cfg.seed)
    (x_tr, y_tr), (x_va, y_va) = bundle.train, bundle.val
    train = make_pipeline(x_tr, y_tr, cfg.batch_size, training=True, seed=cfg.seed, augment=augment)
    val = make_pipeline(x_va, y_va, max(cfg.batch_size, 256))
    return Pipelines(train=train, val=val)
