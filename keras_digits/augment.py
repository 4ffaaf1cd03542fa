"""Training-time augmentation: Keras preprocessing layers applied in tf.data.map, never in the model."""

from __future__ import annotations

from typing import Callable

from keras_digits.errors import KerasDigitsError

AUGMENTS = ("none",)


def make_augment(spec: str, dataset: str, seed: int = 0) -> Callable | None:
    """A batch function (images, labels) -> (images, labels) for `spec`, or None for 'none'."""
    if spec in ("", "none", None):
        return None
    raise KerasDigitsError(f"unknown augmentation {spec!r}; choose one of: {', '.join(AUGMENTS)}")
