"""Class balancing (`--balance`): inverse-frequency class weights, class-balanced resampled batches,
and the skewed (long-tailed) training subsets the balancing study trains on.

* ``class_weight``: every sample's loss is weighted by ``w[c] = (1 / n_c) / mean_k(1 / n_k)``, the
  inverse class frequency normalised so that the weights of the classes present average 1 (classes
  absent from the training split get weight 0: they have no samples to weight). Passed to
  ``model.fit(class_weight=...)`` through ``Pipelines.class_weight``.
* ``resample``: training batches drawn class-balanced in tf.data. Each class is its own stream (its
  indices, shuffled each pass, repeated forever); ``tf.data.Dataset.sample_from_datasets`` picks a
  stream with equal probability for every sample, so each class is 1/K of every batch in
  expectation; rare classes are oversampled and common ones undersampled. One epoch is
  ``len(train) // batch_size`` steps, so an epoch shows as many images as without balancing. The
  images stay uint8 until the model, like in `keras_digits.data.pipeline.make_pipeline`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from keras_digits.data.splits import DataBundle
from keras_digits.errors import KerasDigitsError


def class_weights(y: np.ndarray, num_classes: int | None = None) -> dict[int, float]:
    """Inverse class frequency, normalised so the present classes' weights have mean 1."""
    y = np.asarray(y).astype(np.int64).ravel()
    if y.size == 0:
        raise KerasDigitsError("cannot compute class weights of an empty training split")
    k = int(num_classes if num_classes is not None else y.max() + 1)
    counts = np.bincount(y, minlength=k).astype(np.float64)
    present = counts > 0
    inv = np.zeros(k)
    inv[present] = 1.0 / counts[present]
    inv[present] /= inv[present].mean()
    return {int(c): float(inv[c]) for c in range(k)}


def balanced_indices(y: np.ndarray, classes: list[int], total: int, key):
    """`total` training indices drawn class-balanced with stateless randomness keyed on `key` (an int64
    tensor): each sample's class uniformly at random, and each class's indices in turns of fresh
    permutations (the k-th draw of class c is the k-th element of its permutations laid end to end)."""
    import tensorflow as tf

    from keras_digits.data.pipeline import stateless_key

    k = len(classes)
    choice = tf.random.stateless_uniform([total], seed=stateless_key(key, 0), minval=0, maxval=k, dtype=tf.int32)
    order = tf.argsort(choice, stable=True)  # draws grouped by class, in draw order within a class
    starts = tf.cumsum(tf.math.bincount(choice, minlength=k, maxlength=k), exclusive=True)
    ranked = tf.range(total, dtype=tf.int32) - tf.gather(starts, tf.gather(choice, order))
    rank = tf.scatter_nd(order[:, None], ranked, [total])  # the k-th draw of its class
    counts = tf.math.bincount(choice, minlength=k, maxlength=k)
    streams, lengths = [], []
    for j, c in enumerate(classes):  # as many permutations as this epoch's draws of the class need
        idx = np.flatnonzero(y == c).astype(np.int64)
        turns = (counts[j] + len(idx) - 1) // len(idx)
        noise = tf.random.stateless_uniform(tf.stack([turns, len(idx)]), seed=stateless_key(key, 1 + j))
        streams.append(tf.reshape(tf.gather(idx, tf.argsort(noise, axis=1)), [-1]))
        lengths.append(turns * len(idx))
    offsets = tf.cumsum(tf.stack(lengths), exclusive=True)
    return tf.gather(tf.concat(streams, axis=0), tf.gather(offsets, choice) + rank)


def balanced_pipeline(
    x: np.ndarray,
    y: np.ndarray,
    batch_size: int,
    *,
    seed: int = 0,
    augment: Callable | None = None,
    epoch=None,
):
    """Class-balanced training batches of (uint8 images, int32 labels); see the module docstring."""
    import tensorflow as tf

    from keras_digits.data.augment import augment_dataset

    y = np.asarray(y).astype(np.int64).ravel()
    classes = [int(c) for c in np.unique(y)]
    if len(y) < batch_size:
        raise KerasDigitsError(
            f"--balance resample needs at least one full batch: {len(y)} training images < batch size {batch_size}"
        )
    from keras_digits.data.pipeline import gather_fn, with_cardinality

    gather = gather_fn(x, y)
    steps = len(y) // batch_size
    if epoch is None:  # each pass draws anew (the tuner's pipelines)
        streams = [
            tf.data.Dataset.from_tensor_slices(np.flatnonzero(y == c))
            .shuffle(int((y == c).sum()), seed=seed + 1 + c, reshuffle_each_iteration=True)
            .repeat()
            for c in classes
        ]
        ds = tf.data.Dataset.sample_from_datasets(
            streams, weights=[1.0 / len(classes)] * len(classes), seed=seed, rerandomize_each_iteration=True
        )
    else:  # epoch e's draw is a function of (seed, e): a resumed run continues it
        from keras_digits.data.pipeline import per_epoch

        ds = per_epoch(
            lambda key: tf.data.Dataset.from_tensor_slices(balanced_indices(y, classes, steps * batch_size, key)),
            seed,
            epoch,
        )
    ds = with_cardinality(ds.batch(batch_size, drop_remainder=True).take(steps), steps)
    ds = ds.map(gather, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = augment_dataset(ds, augment, seed, epoch)
    from keras_digits.data.pipeline import pipeline_options

    return ds.prefetch(tf.data.AUTOTUNE).with_options(pipeline_options())


def long_tail_counts(counts: np.ndarray, ratio: float) -> np.ndarray:
    """Per-class sizes of an exponential long tail: class c keeps ratio**(-c/(K-1)) of the largest
    class's count (class 0 keeps all of it, the last class 1/ratio of it), never more than it has
    and never less than 1."""
    counts = np.asarray(counts)
    k = len(counts)
    top = counts.max()
    want = np.floor(top * ratio ** (-np.arange(k) / max(1, k - 1))).astype(int)
    return np.clip(np.minimum(want, counts), 1, None) * (counts > 0)


def skew_training_split(bundle: DataBundle, ratio: float = 20.0, seed: int = 0) -> DataBundle:
    """The bundle with its training split cut to a long tail (see `long_tail_counts`); validation and
    test are untouched, so they stay as balanced as the dataset is. The kept images of each class are
    a seeded random choice."""
    from dataclasses import replace

    x, y = bundle.train
    y = np.asarray(y)
    keep_n = long_tail_counts(np.bincount(y.astype(np.int64), minlength=bundle.num_classes), ratio)
    rng = np.random.default_rng(seed)
    keep = np.concatenate(
        [rng.choice(np.flatnonzero(y == c), size=int(n), replace=False) for c, n in enumerate(keep_n) if n > 0]
    )
    keep.sort()
    return replace(bundle, train=(x[keep], y[keep]))
