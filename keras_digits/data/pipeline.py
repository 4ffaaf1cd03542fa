"""tf.data pipelines from uint8 arrays: index shuffling, batched gathers, a slot for augmentation."""

from __future__ import annotations

from typing import Callable

import numpy as np
import tensorflow as tf

AUTOTUNE = tf.data.AUTOTUNE
BatchFn = Callable[[tf.Tensor, tf.Tensor], tuple[tf.Tensor, tf.Tensor]]


def make_pipeline(
    x: np.ndarray,
    y: np.ndarray,
    batch_size: int,
    *,
    training: bool = False,
    seed: int = 0,
    augment: BatchFn | None = None,
    drop_remainder: bool = False,
) -> tf.data.Dataset:
    """Batches of (uint8 images, int32 labels); shuffled each epoch and augmented when training.

    The arrays stay uint8 in one in-memory tensor; each step gathers a batch by shuffled indices,
    which is much cheaper than shuffling and batching single images.
    """
    images = tf.constant(x)
    labels = tf.constant(y.astype(np.int32))
    n = len(y)
    ds = tf.data.Dataset.range(n)
    if training:
        ds = ds.shuffle(n, seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    ds = ds.map(lambda idx: (tf.gather(images, idx), tf.gather(labels, idx)), num_parallel_calls=AUTOTUNE,
                deterministic=True)
    if training and augment is not None:
        ds = ds.map(augment, num_parallel_calls=AUTOTUNE, deterministic=True)
    return ds.prefetch(AUTOTUNE)
