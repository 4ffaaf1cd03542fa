"""tf.data pipelines from uint8 arrays: index shuffling and batched gathers (augmentation is added on
top by keras_digits.data.augment.augment_dataset, class balancing by keras_digits.data.balance)."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import tensorflow as tf

AUTOTUNE = tf.data.AUTOTUNE
EPOCH_STRIDE = 1_000_003  # per-epoch key = seed * EPOCH_STRIDE + epoch (distinct for any run length)


def epoch_variable() -> tf.Variable:
    """The epoch number that training pipelines key their randomness on (int64, on the CPU, where
    tf.data reads it). `keras_digits.train` sets it at the start of every epoch, so epoch e's order
    and augmentation are a function of (seed, e) alone: the same in a run resumed in a new process
    as in an uninterrupted one (a tf.data shuffle's own reshuffling restarts with the process)."""
    with tf.device("/CPU:0"):
        return tf.Variable(0, dtype=tf.int64, trainable=False, name="data_epoch")


def per_epoch(build: Callable[[tf.Tensor], tf.data.Dataset], seed: int, epoch: tf.Variable) -> tf.data.Dataset:
    """`build(key)` made anew at each iteration, `key` an int64 scalar tensor derived from `seed` and the
    value of `epoch` when the iteration starts. `build` must draw only with stateless ops keyed on it
    (`stateless_key`, `permutation`, `seed_stream`): TensorFlow's seeded ops (shuffle(seed=...),
    Dataset.random) mix in the global seed and fail on a tensor seed when that is 0 (`--seed 0`)."""

    def one_epoch(_):
        return build(tf.constant(seed, tf.int64) * EPOCH_STRIDE + epoch.read_value())

    return tf.data.Dataset.from_tensors(tf.constant(0, tf.int64)).flat_map(one_epoch)


def pipeline_options() -> tf.data.Options:
    """The options of every pipeline built here: a deterministic order, and tf.data's autotuning off.

    With autotuning on, epochs after the first of a `keras_digits.train` run often began with a
    stall of many seconds (MNIST `--recipe best` on 2 cores, one run of 4 epochs: 28.6, 43.0, 38.1,
    25.3 s; without autotuning 28.2, 24.3, 24.0, 23.6 s; benchmarks/epoch_overhead.py). Deleting an
    iterator can wait for the autotuning thread's next wake-up (seen at `fit`'s return), and Keras
    makes new iterators every epoch; what triggers it in a training run but not in a bare `fit` is
    not known (docs/speed.md). Without autotuning, tf.data uses its fixed defaults
    for AUTOTUNE (map parallelism, prefetch buffers); the first epoch took the same time.
    Under `--strategy mirrored` / `multiworker`, TensorFlow's per-device iterators build their own
    datasets; whether those autotune and stall was not checked.
    """
    options = tf.data.Options()
    options.deterministic = True
    options.autotune.enabled = False
    return options


def stateless_key(key: tf.Tensor, salt) -> tf.Tensor:
    """A [2] int64 seed for tf.random.stateless_* ops: the epoch key and a salt naming the use."""
    return tf.stack([tf.cast(key, tf.int64), tf.cast(salt, tf.int64)])


def permutation(n: int, key: tf.Tensor, salt=0) -> tf.Tensor:
    """A permutation of 0..n-1 (int32), a function of (key, salt) alone."""
    return tf.argsort(tf.random.stateless_uniform([n], seed=stateless_key(key, salt)))


def seed_stream(key: tf.Tensor, salt=1) -> tf.data.Dataset:
    """Endless int64 seeds (like tf.data.Dataset.random), the i-th a function of (key, salt, i)."""
    base = tf.random.stateless_uniform([], seed=stateless_key(key, salt), minval=None, maxval=None, dtype=tf.int64)
    return tf.data.Dataset.counter().map(
        lambda i: tf.random.stateless_uniform([], seed=tf.stack([base, i]), minval=None, maxval=None, dtype=tf.int64)
    )


def with_cardinality(ds: tf.data.Dataset, n) -> tf.data.Dataset:
    """`ds` declared to hold `n` elements (flat_map hides the count that Keras' progress bar uses)."""
    n = int(n)
    return ds.apply(tf.data.experimental.assert_cardinality(n)) if n >= 0 else ds


def gather_fn(x: np.ndarray, y: np.ndarray) -> Callable[[tf.Tensor], tuple[tf.Tensor, tf.Tensor]]:
    """idx -> (images[idx], labels[idx]): a gather from one in-memory tensor, or, for a memory-mapped
    split (np.memmap, keras_digits.data.npz_stream), a read of just those rows from disk."""
    labels = tf.constant(np.asarray(y).astype(np.int32))
    if isinstance(x, np.memmap):
        shape = (None,) + tuple(x.shape[1:])

        def read_rows(idx):
            return np.take(x, idx, axis=0)  # fancy indexing a memmap reads only these rows

        def gather(idx):
            images = tf.numpy_function(read_rows, [idx], tf.uint8, stateful=False)
            images.set_shape(shape)
            return images, tf.gather(labels, idx)

        return gather
    images = tf.constant(x)
    return lambda idx: (tf.gather(images, idx), tf.gather(labels, idx))


def make_pipeline(
    x: np.ndarray,
    y: np.ndarray,
    batch_size: int,
    *,
    training: bool = False,
    seed: int = 0,
    epoch: tf.Variable | None = None,
) -> tf.data.Dataset:
    """Batches of (uint8 images, int32 labels); shuffled each epoch when training.

    The arrays stay uint8 in one in-memory tensor (or on disk, memory-mapped); each step gathers a batch
    by shuffled indices, which is much cheaper than shuffling and batching single images. With `epoch` (an
    `epoch_variable`) the order is a function of (seed, epoch), else it changes with every iteration.
    """
    gather = gather_fn(x, y)
    n = len(y)
    ds = tf.data.Dataset.range(n)
    if training and epoch is not None:
        ds = per_epoch(
            lambda key: tf.data.Dataset.from_tensor_slices(tf.cast(permutation(n, key), tf.int64)), seed, epoch
        )
    elif training:
        ds = ds.shuffle(n, seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)
    if training and epoch is not None:
        ds = with_cardinality(ds, math.ceil(n / batch_size))
    ds = ds.map(gather, num_parallel_calls=AUTOTUNE, deterministic=True)
    return ds.prefetch(AUTOTUNE).with_options(pipeline_options())
