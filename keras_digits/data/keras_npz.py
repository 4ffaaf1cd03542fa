"""MNIST in Keras' npz layout (x_train, y_train, x_test, y_test)."""

from __future__ import annotations

from pathlib import Path

from keras_digits.data.base import (
    DatasetSpec,
    RawSplits,
    keras_cache_dir,
    load_npz,
    missing_file_error,
    offline,
    require_keys,
    validate_arrays,
)
from keras_digits.errors import KerasDigitsError

KERAS_KEYS = ("x_train", "y_train", "x_test", "y_test")


def read_keras_npz(path: Path, spec: DatasetSpec) -> RawSplits:
    """Load and validate one Keras-layout npz file."""
    data = load_npz(path, spec.name)
    require_keys(data, KERAS_KEYS, path, spec.name)
    train = validate_arrays(spec.name, "train", data["x_train"], data["y_train"], spec.num_classes)
    test = validate_arrays(spec.name, "test", data["x_test"], data["y_test"], spec.num_classes)
    if spec.image_shape and train[0].shape[1:] != spec.image_shape:
        raise KerasDigitsError(
            f"{spec.name}: {path} holds images of shape {train[0].shape[1:]}, expected {spec.image_shape}"
        )
    if test[0].shape[1:] != train[0].shape[1:]:
        raise KerasDigitsError(f"{spec.name}: train and test image shapes differ in {path}")
    return RawSplits(train=train, test=test, source=str(path))


def load_mnist(spec: DatasetSpec, data_dir: Path | None) -> RawSplits:
    """data dir → Keras cache → keras.datasets download → error."""
    fname = spec.files[0]
    looked: list[Path] = []
    if data_dir is not None:
        looked.append(data_dir / fname)
        if looked[-1].is_file():
            return read_keras_npz(looked[-1], spec)
    cached = keras_cache_dir() / fname
    looked.append(cached)
    if cached.is_file():
        return read_keras_npz(cached, spec)
    if offline():
        raise missing_file_error(spec, looked, "downloads are off")
    return _download_mnist(spec, looked)


def _download_mnist(spec: DatasetSpec, looked: list[Path]) -> RawSplits:
    import keras

    try:
        (x_train, y_train), (x_test, y_test) = keras.datasets.mnist.load_data()
    except Exception as exc:  # network errors come in many types from keras' get_file
        raise missing_file_error(spec, looked, f"download failed: {type(exc).__name__}") from None
    train = validate_arrays(spec.name, "train", x_train, y_train, spec.num_classes)
    test = validate_arrays(spec.name, "test", x_test, y_test, spec.num_classes)
    return RawSplits(train=train, test=test, source="keras.datasets.mnist")
