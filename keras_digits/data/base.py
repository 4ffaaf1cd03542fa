"""Shared pieces of the data layer: the spec type, arrays validation, file resolution, checksums."""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from keras_digits.errors import KerasDigitsError
from keras_digits.utils.offline import OFFLINE_ENV, offline

DATA_ENV = "KERAS_DIGITS_DATA"

Arrays = tuple[np.ndarray, np.ndarray]


@dataclass
class RawSplits:
    """Arrays as a source provides them: train and test always, val only where official."""

    train: Arrays
    test: Arrays
    val: Arrays | None = None
    source: str = ""
    label_names: Sequence[str] | None = None


@dataclass(frozen=True)
class DatasetSpec:
    """What is known about a dataset before loading it."""

    name: str
    image_shape: tuple[int, int, int] | None  # None: decided at load time (folder)
    num_classes: int | None
    label_names: tuple[str, ...] | None
    splits: tuple[str, ...]
    official_val: bool
    source: str
    files: tuple[str, ...] = ()
    download: str = ""
    checksums: dict[str, str] = field(default_factory=dict)  # file name -> "md5:..."
    loader: Callable[..., RawSplits] | None = None
    description: str = ""
    task: str = "multi-class"  # MedMNIST's task type (binary-class, ordinal-regression, multi-label, ...)
    sizes: tuple[int, ...] = ()  # published image sizes a --size may pick (MedMNIST+); () = one size
    centred_digits: bool = False  # images are MNIST-style digits (20 px box, centre of mass centred): see digit_norm


def data_dir_from(arg: str | os.PathLike | None) -> Path | None:
    """The user's data folder: the explicit option, else $KERAS_DIGITS_DATA, else None."""
    value = arg if arg not in (None, "") else os.environ.get(DATA_ENV)
    if not value:
        return None
    path = Path(value).expanduser()
    if not path.exists():
        raise KerasDigitsError(f"data directory not found: {path}")
    if not path.is_dir():
        raise KerasDigitsError(f"data directory is not a folder: {path}")
    return path


def keras_cache_dir() -> Path:
    """Keras' dataset cache (~/.keras/datasets, or $KERAS_HOME/datasets)."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return Path(home) / "datasets"


def file_md5(path: Path, chunk: int = 1 << 20) -> str:
    """MD5 hex digest of a file."""
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_md5(path: Path, expected: str) -> None:
    """Raise KerasDigitsError when a file's MD5 is not the published one."""
    got = file_md5(path)
    if got != expected:
        raise KerasDigitsError(
            f"checksum mismatch for {path}: md5 {got}, expected {expected}; "
            "the file is corrupt or incomplete: delete it and download it again"
        )


def download_file(url: str, dest: Path, md5: str | None = None, timeout: float = 30.0) -> Path:
    """Download `url` to `dest` (atomically), verifying the MD5 when given."""
    if offline():
        raise KerasDigitsError(f"downloads are off (${OFFLINE_ENV}); cannot fetch {url}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp, open(tmp, "wb") as out:
            while True:
                block = resp.read(1 << 20)
                if not block:
                    break
                out.write(block)
        if md5:
            verify_md5(tmp, md5)
        os.replace(tmp, dest)
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        raise KerasDigitsError(f"download of {url} failed ({exc})") from None
    finally:
        if tmp.exists():
            tmp.unlink()
    return dest


def missing_file_error(
    spec: DatasetSpec, looked: Sequence[Path], why: str = "", files: Sequence[str] = (), download: str = ""
) -> KerasDigitsError:
    """The error for a dataset that is nowhere: what to get, where to put it, where from."""
    places = ", ".join(str(p) for p in looked) or "(nowhere)"
    files = " or ".join(files or spec.files)
    extra = f" ({why})" if why else ""
    return KerasDigitsError(
        f"{spec.name}: could not find {files}{extra}; looked in {places}. "
        f"Put the file in a folder and pass --data-dir FOLDER (or set ${DATA_ENV}); "
        f"it can be downloaded from {download or spec.download}"
    )


def validate_arrays(name: str, split: str, x: np.ndarray, y: np.ndarray, num_classes: int | None) -> Arrays:
    """Check dtype, shape and label range; return (uint8 NHWC images, int32 labels)."""
    if not isinstance(x, np.ndarray) or not isinstance(y, np.ndarray):
        raise KerasDigitsError(f"{name}: {split} images/labels are not arrays")
    if x.dtype != np.uint8:
        raise KerasDigitsError(f"{name}: {split} images must be uint8, got {x.dtype}")
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise KerasDigitsError(f"{name}: {split} images must have shape (N, H, W) or (N, H, W, 1|3), got {x.shape}")
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise KerasDigitsError(f"{name}: {split} labels must have shape (N,) or (N, 1), got {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise KerasDigitsError(f"{name}: {split} labels must be integers, got {y.dtype}")
    if len(x) != len(y):
        raise KerasDigitsError(f"{name}: {split} has {len(x)} images but {len(y)} labels")
    if len(x) == 0:
        raise KerasDigitsError(f"{name}: {split} split is empty")
    if num_classes is not None and (y.min() < 0 or y.max() >= num_classes):
        raise KerasDigitsError(
            f"{name}: {split} labels must lie in [0, {num_classes - 1}], found {int(y.min())}..{int(y.max())}"
        )
    return x, y.astype(np.int32)


def load_npz(path: Path, name: str) -> dict[str, np.ndarray]:
    """Read every array of an npz file, turning a corrupt file into a clear error."""
    import zipfile

    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, KeyError) as exc:
        raise KerasDigitsError(f"{name}: {path} is not a readable npz file ({exc})") from None


def require_keys(data: dict, keys: Sequence[str], path: Path, name: str) -> None:
    """Raise when an npz lacks expected keys."""
    missing = [k for k in keys if k not in data]
    if missing:
        raise KerasDigitsError(
            f"{name}: {path} lacks key(s) {', '.join(missing)}; found {', '.join(sorted(data)) or 'none'}"
        )
