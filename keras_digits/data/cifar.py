"""CIFAR-10 in its python layout: cifar-10-python.tar.gz or the extracted cifar-10-batches-py/.

The batches are pickles, read with a restricted unpickler (BatchUnpickler): only the numpy array
reconstruction a CIFAR-10 batch needs is allowed, so a planted batch file cannot run code.
"""

from __future__ import annotations

import importlib
import io
import pickle
import tarfile
import warnings
from pathlib import Path

import numpy as np

from keras_digits.data.base import (
    DatasetSpec,
    RawSplits,
    file_md5,
    keras_cache_dir,
    missing_file_error,
    offline,
    validate_arrays,
)
from keras_digits.errors import KerasDigitsError

BATCH_DIR = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"


# (module, name) -> (numpy module under numpy._core / numpy.core, attribute): numpy < 2 and >= 2 spellings
_NUMPY_GLOBALS = {
    ("numpy", "ndarray"): ("", "ndarray"),
    ("numpy", "dtype"): ("", "dtype"),
    **{
        (f"{pkg}.multiarray", "_reconstruct"): ("multiarray", "_reconstruct")  # protocols 0-4
        for pkg in ("numpy.core", "numpy._core")
    },
    **{
        (f"{pkg}.numeric", "_frombuffer"): ("numeric", "_frombuffer")  # protocol 5
        for pkg in ("numpy.core", "numpy._core")
    },
}


class RefusedGlobal(pickle.UnpicklingError):
    """A pickle asked for a global that a CIFAR-10 batch never holds."""


def _latin1(text: str, encoding: str = "latin1") -> bytes:
    """`_codecs.encode` as Python 3 pickles bytes at protocol 2, limited to that use."""
    if not isinstance(text, str) or encoding != "latin1":
        raise RefusedGlobal("_codecs.encode other than latin1 text")
    return text.encode("latin1")


def _numpy_attr(submodule: str, attr: str):
    for pkg in ("numpy._core", "numpy.core"):  # numpy >= 2 first: its numpy.core is a deprecated alias
        try:
            module = importlib.import_module(f"{pkg}.{submodule}" if submodule else "numpy")
            return getattr(module, attr)
        except (ImportError, AttributeError):
            continue
    raise RefusedGlobal(f"numpy {submodule}.{attr} not found")


class BatchUnpickler(pickle.Unpickler):
    """Unpickles a CIFAR-10 batch: dicts, lists, bytes, ints and numpy arrays; any other global is refused."""

    def find_class(self, module: str, name: str):
        if (module, name) == ("_codecs", "encode"):
            return _latin1
        if (module, name) in (("__builtin__", "bytes"), ("builtins", "bytes")):  # an empty bytes at protocol 2
            return bytes
        if (module, name) in _NUMPY_GLOBALS:
            return _numpy_attr(*_NUMPY_GLOBALS[(module, name)])
        raise RefusedGlobal(f"{module}.{name}")


def load_batch_bytes(raw: bytes) -> object:
    """A CIFAR-10 batch pickle's object, unpickled without running anything but numpy's array rebuild."""
    return BatchUnpickler(io.BytesIO(raw), encoding="bytes").load()


def _decode_batch(raw: bytes, where: str, name: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        batch = load_batch_bytes(raw)
        if not isinstance(batch, dict):
            raise TypeError(f"holds a {type(batch).__name__}, not a dict")
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
    except RefusedGlobal as exc:
        raise KerasDigitsError(
            f"{name}: {where} is not a CIFAR-10 batch: its pickle asks for {exc}, which a "
            "CIFAR-10 batch never holds; refused without loading it (it could run code)"
        ) from None
    except Exception as exc:  # a corrupt pickle can raise nearly anything
        raise KerasDigitsError(f"{name}: {where} is not a CIFAR-10 batch ({type(exc).__name__}: {exc})") from None
    if data.ndim != 2 or data.shape[1] != 3072:
        raise KerasDigitsError(f"{name}: {where} data has shape {data.shape}, expected (N, 3072)")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def _assemble(batches: dict[str, bytes], where: str, spec: DatasetSpec) -> RawSplits:
    missing = [b for b in (*TRAIN_BATCHES, TEST_BATCH) if b not in batches]
    if missing:
        raise KerasDigitsError(f"{spec.name}: {where} lacks batch file(s) {', '.join(missing)}")
    parts = [_decode_batch(batches[b], f"{where}/{b}", spec.name) for b in TRAIN_BATCHES]
    x_train = np.concatenate([p[0] for p in parts])
    y_train = np.concatenate([p[1] for p in parts])
    x_test, y_test = _decode_batch(batches[TEST_BATCH], f"{where}/{TEST_BATCH}", spec.name)
    train = validate_arrays(spec.name, "train", x_train, y_train, spec.num_classes)
    test = validate_arrays(spec.name, "test", x_test, y_test, spec.num_classes)
    return RawSplits(train=train, test=test, source=where)


def read_cifar_tar(path: Path, spec: DatasetSpec) -> RawSplits:
    """Read the batches straight out of cifar-10-python.tar.gz."""
    md5 = spec.checksums.get(path.name, "").removeprefix("md5:")
    try:
        with tarfile.open(path, "r:*") as tar:
            batches = {}
            for member in tar.getmembers():
                base = Path(member.name).name
                if member.isfile() and base in (*TRAIN_BATCHES, TEST_BATCH):
                    batches[base] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise KerasDigitsError(f"{spec.name}: {path} is not a readable tar archive ({exc})") from None
    raw = _assemble(batches, str(path), spec)
    if md5 and file_md5(path) != md5:
        warnings.warn(
            f"{path} is not byte-identical to the published archive; accepted (valid structure)", stacklevel=2
        )
    return raw


def read_cifar_dir(path: Path, spec: DatasetSpec) -> RawSplits:
    """Read an extracted cifar-10-batches-py folder."""
    batches = {}
    for b in (*TRAIN_BATCHES, TEST_BATCH):
        f = path / b
        if f.is_file():
            batches[b] = f.read_bytes()
    return _assemble(batches, str(path), spec)


def load_cifar10(spec: DatasetSpec, data_dir: Path | None) -> RawSplits:
    """data dir (tar.gz or batches) → Keras cache → keras.datasets download → error."""
    looked: list[Path] = []
    roots = ([data_dir] if data_dir is not None else []) + [keras_cache_dir()]
    for root in roots:
        tar = root / "cifar-10-python.tar.gz"
        folder = root / BATCH_DIR
        looked += [tar, folder]
        if tar.is_file():
            return read_cifar_tar(tar, spec)
        if folder.is_dir():
            return read_cifar_dir(folder, spec)
        if root == data_dir and all((root / b).is_file() for b in (*TRAIN_BATCHES, TEST_BATCH)):
            return read_cifar_dir(root, spec)
    if offline():
        raise missing_file_error(spec, looked, "downloads are off")
    import keras

    try:
        (x_train, y_train), (x_test, y_test) = keras.datasets.cifar10.load_data()
    except Exception as exc:
        raise missing_file_error(spec, looked, f"download failed: {type(exc).__name__}") from None
    train = validate_arrays(spec.name, "train", x_train, y_train, spec.num_classes)
    test = validate_arrays(spec.name, "test", x_test, y_test, spec.num_classes)
    return RawSplits(train=train, test=test, source="keras.datasets.cifar10")
