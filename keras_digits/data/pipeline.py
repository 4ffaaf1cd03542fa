"""tf.data pipelines from uint8 arrays: index shuffling and batched gathers (augmentation is added on
top by keras_digits.data.augment.augment_dataset, class balancing by keras_digits.data.balance)."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

AUTOTUNE = tf.data.AUTOTUNE


def make_pipeline(
    x: np.ndarray,
    y: np.ndarray,
    batch_size: int,
    *,
    training: bool = False,
    seed: int = 0,
) -> tf.data.Dataset:
    """Batches of (uint8 images, int32 labels); shuffled each epoch when training.

    The arrays stay uint8 in one in-memory tensor; each step gathers a batch by shuffled indices,
    which is much cheaper than shuffling and batching single images.
    """
    images = tf.constant(x)
    labels = tf.constant(y.astype(np.int32))
    n = len(y)
    ds = tf.data.Dataset.range(n)
    if training:
        ds = ds.shuffle(n, seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)
    ds = ds.map(lambda idx: (tf.gather(images, idx), tf.gather(labels, idx)), num_parallel_calls=AUTOTUNE,
                deterministic=True)
    return ds.prefetch(AUTOTUNE)
