"""MedMNIST npz layout ({train,val,test}_{images,labels}), read directly: no torch needed.

Sizes: 28 px (NAME.npz) is read into memory; 64, 128 and 224 px (NAME_SIZE.npz, MedMNIST+) are converted
once to uncompressed arrays and memory-mapped (keras_digits.data.npz_stream), so no split is ever held in
memory. ChestMNIST (multi-label) is refused: every model here is a single-label softmax classifier.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from keras_digits.data.base import (
    DatasetSpec,
    RawSplits,
    download_file,
    file_md5,
    load_npz,
    missing_file_error,
    offline,
    require_keys,
    validate_arrays,
    verify_md5,
)
from keras_digits.data.medmnist_info import SIZES, ZENODO
from keras_digits.errors import KerasDigitsError

MEDMNIST_KEYS = tuple(f"{s}_{k}" for s in ("train", "val", "test") for k in ("images", "labels"))
IMAGE_KEYS = tuple(k for k in MEDMNIST_KEYS if k.endswith("_images"))
IN_MEMORY_SIZE = 28  # larger sizes are memory-mapped


def medmnist_cache_dir() -> Path:
    """MedMNIST's own default root (~/.medmnist)."""
    return Path(os.path.expanduser("~")) / ".medmnist"


def medmnist_file(name: str, size: int | None) -> str:
    """MedMNIST's file name: NAME.npz at 28 px, NAME_SIZE.npz otherwise."""
    return f"{name}.npz" if size in (None, 28) else f"{name}_{size}.npz"


def medmnist_url(name: str, size: int | None) -> str:
    """MedMNIST's download address of one subset at one size."""
    return f"{ZENODO}/{medmnist_file(name, size)}?download=1"


def check_size(spec: DatasetSpec, size: int | None) -> int:
    """The size asked for (28 when None); one clear error for sizes MedMNIST does not publish."""
    size = 28 if size is None else int(size)
    if size not in SIZES:
        raise KerasDigitsError(f"--size must be one of {', '.join(map(str, SIZES))} for {spec.name}, got {size}")
    return size


def refuse_task(spec: DatasetSpec) -> None:
    """ChestMNIST and any other multi-label subset: one clear line instead of a wrong single-label run."""
    if spec.task.startswith("multi-label"):
        n = spec.num_classes
        raise KerasDigitsError(
            f"{spec.name} is multi-label ({n} findings, any number of them per image): keras_digits trains "
            "single-label softmax classifiers, and training it as single-label would be wrong; it is not supported"
        )


def _check_splits(spec: DatasetSpec, path: Path, splits: dict, size: int) -> None:
    _check_shapes(spec, path, {s: tuple(a[0].shape[1:]) for s, a in splits.items()}, size)


def _check_shapes(spec: DatasetSpec, path: Path, shapes: dict[str, tuple[int, ...]], size: int) -> None:
    """Refuse splits whose image shapes (H, W, C) differ, or differ from the spec's channels or `size`."""
    if len(set(shapes.values())) != 1:
        raise KerasDigitsError(f"{spec.name}: split image shapes differ in {path}: {shapes}")
    h, w, c = next(iter(shapes.values()))
    if spec.image_shape and c != spec.image_shape[-1]:
        raise KerasDigitsError(f"{spec.name}: {path} holds {c}-channel images, expected {spec.image_shape[-1]}")
    if (h, w) != (size, size):
        raise KerasDigitsError(f"{spec.name}: {path} holds {h}x{w} images, expected {size}x{size} for --size {size}")


def read_medmnist_npz(path: Path, spec: DatasetSpec, size: int = 28) -> RawSplits:
    """Load and validate a MedMNIST npz with its official train/val/test splits (memory-mapped above 28 px)."""

    def validated(data: dict) -> dict:
        splits = {
            s: validate_arrays(spec.name, s, data[f"{s}_images"], np.asarray(data[f"{s}_labels"]), spec.num_classes)
            for s in ("train", "val", "test")
        }
        _check_splits(spec, path, splits, size)
        return splits

    if size > IN_MEMORY_SIZE:
        from keras_digits.data.npz_stream import array_shapes, cached_arrays

        shapes = {k: (*s[1:], 1) if len(s) == 3 else s[1:] for k, s in array_shapes(path, IMAGE_KEYS).items()}
        if all(len(s) == 3 for s in shapes.values()):  # refuse a wrong size before converting (minutes, GBs)
            _check_shapes(spec, path, shapes, size)
        splits: dict = {}  # filled by the check, which deletes the converted copy of a file it refuses
        cached_arrays(
            path,
            MEDMNIST_KEYS,
            IMAGE_KEYS,
            tag=f"{spec.name}_{size}",
            check=lambda data: splits.update(validated(data)),
        )
    else:
        data = load_npz(path, spec.name)
        require_keys(data, MEDMNIST_KEYS, path, spec.name)
        splits = validated(data)
    return RawSplits(train=splits["train"], val=splits["val"], test=splits["test"], source=str(path))


def load_medmnist(spec: DatasetSpec, data_dir: Path | None, size: int | None = None) -> RawSplits:
    """data dir → ~/.medmnist → download from MedMNIST's URL (MD5-checked) → error."""
    refuse_task(spec)
    size = check_size(spec, size)
    fname = medmnist_file(spec.name, size)
    url = medmnist_url(spec.name, size)
    md5 = spec.checksums.get(fname, "").removeprefix("md5:")
    looked: list[Path] = []
    if data_dir is not None:
        local = data_dir / fname
        looked.append(local)
        if local.is_file():
            raw = read_medmnist_npz(local, spec, size)
            if md5 and size == IN_MEMORY_SIZE and file_md5(local) != md5:  # (large files: minutes to hash)
                warnings.warn(
                    f"{local} is not byte-identical to the published {fname} (md5 {md5}); "
                    "accepted because its structure is valid",
                    stacklevel=2,
                )
            return raw
    cached = medmnist_cache_dir() / fname
    looked.append(cached)
    if cached.is_file():
        if md5 and size == IN_MEMORY_SIZE:  # filled by a download, which checked the larger sizes' MD5 already
            verify_md5(cached, md5)
        return read_medmnist_npz(cached, spec, size)
    if offline():
        raise missing_file_error(spec, looked, "downloads are off", files=(fname,), download=url)
    try:
        download_file(url, cached, md5 or None)
    except KerasDigitsError as exc:
        raise missing_file_error(spec, looked, str(exc), files=(fname,), download=url) from None
    return read_medmnist_npz(cached, spec, size)
