"""SVHN cropped digits: train_32x32.mat / test_32x32.mat, or tensorflow-datasets' svhn_cropped."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from keras_digits.data.base import (
    DatasetSpec,
    RawSplits,
    file_md5,
    missing_file_error,
    offline,
    validate_arrays,
)
from keras_digits.errors import KerasDigitsError

TRAIN_FILE = "train_32x32.mat"
TEST_FILE = "test_32x32.mat"


def read_svhn_mat(path: Path, spec: DatasetSpec, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Read one .mat file: X (32, 32, 3, N) uint8, y (N, 1) with 10 meaning digit 0."""
    import scipy.io

    try:  # (loadmat builds arrays and MATLAB structs, cells and objects as plain data: it never runs code)
        mat = scipy.io.loadmat(path, variable_names=("X", "y"))
    except Exception as exc:  # scipy raises ValueError, TypeError, MatReadError... on junk
        raise KerasDigitsError(f"{spec.name}: {path} is not a readable .mat file ({exc})") from None
    for key in ("X", "y"):
        if key not in mat:
            raise KerasDigitsError(f"{spec.name}: {path} lacks key {key!r}")
    x, y = mat["X"], np.asarray(mat["y"]).reshape(-1)
    if x.ndim != 4 or x.shape[:3] != (32, 32, 3):
        raise KerasDigitsError(f"{spec.name}: {path} X has shape {x.shape}, expected (32, 32, 3, N)")
    if not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.floating) and np.all(y == np.round(y))):
        raise KerasDigitsError(f"{spec.name}: {path} y must hold whole numbers (labels 1..10), got dtype {y.dtype}")
    x = np.ascontiguousarray(np.transpose(x, (3, 0, 1, 2)))
    y = np.where(y == 10, 0, y).astype(np.int64)
    md5 = spec.checksums.get(path.name, "").removeprefix("md5:")
    if md5 and file_md5(path) != md5:
        warnings.warn(f"{path} is not byte-identical to the published file; accepted (valid structure)", stacklevel=2)
    return validate_arrays(spec.name, split, x, y, spec.num_classes)


def tfds_data_dir() -> Path:
    """tensorflow-datasets' folder ($TFDS_DATA_DIR or ~/tensorflow_datasets)."""
    return Path(os.environ.get("TFDS_DATA_DIR") or Path.home() / "tensorflow_datasets")


def _from_tfds(spec: DatasetSpec, download: bool) -> RawSplits:
    import tensorflow_datasets as tfds

    data = tfds.load(
        "svhn_cropped",
        split=["train", "test"],
        batch_size=-1,
        as_supervised=True,
        data_dir=str(tfds_data_dir()),
        download=download,
    )
    (x_train, y_train), (x_test, y_test) = [tfds.as_numpy(d) for d in data]
    train = validate_arrays(spec.name, "train", x_train, y_train, spec.num_classes)
    test = validate_arrays(spec.name, "test", x_test, y_test, spec.num_classes)
    return RawSplits(train=train, test=test, source="tfds:svhn_cropped")


def load_svhn(spec: DatasetSpec, data_dir: Path | None) -> RawSplits:
    """data dir (.mat files) → tfds' prepared svhn_cropped → tfds download → error."""
    looked: list[Path] = []
    if data_dir is not None:
        train_f, test_f = data_dir / TRAIN_FILE, data_dir / TEST_FILE
        looked += [train_f, test_f]
        if train_f.is_file() and test_f.is_file():
            return RawSplits(
                train=read_svhn_mat(train_f, spec, "train"),
                test=read_svhn_mat(test_f, spec, "test"),
                source=str(data_dir),
            )
        if train_f.is_file() != test_f.is_file():
            present = train_f if train_f.is_file() else test_f
            raise KerasDigitsError(f"{spec.name}: found {present} but not its partner; both .mat files are needed")
    prepared = tfds_data_dir() / "svhn_cropped"
    looked.append(prepared)
    if prepared.is_dir():
        try:
            return _from_tfds(spec, download=False)
        except KerasDigitsError:
            raise
        except Exception as exc:
            raise missing_file_error(spec, looked, f"tfds copy unreadable: {type(exc).__name__}") from None
    if offline():
        raise missing_file_error(spec, looked, "downloads are off")
    try:
        return _from_tfds(spec, download=True)
    except Exception as exc:
        raise missing_file_error(spec, looked, f"download failed: {type(exc).__name__}") from None
