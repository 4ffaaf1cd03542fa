"""MedMNIST npz layout ({train,val,test}_{images,labels}), read directly: no torch needed."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

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
from keras_digits.errors import KerasDigitsError

MEDMNIST_KEYS = tuple(f"{s}_{k}" for s in ("train", "val", "test") for k in ("images", "labels"))


def medmnist_cache_dir() -> Path:
    """MedMNIST's own default root (~/.medmnist)."""
    return Path(os.path.expanduser("~")) / ".medmnist"


def read_medmnist_npz(path: Path, spec: DatasetSpec) -> RawSplits:
    """Load and validate a MedMNIST npz with its official train/val/test splits."""
    data = load_npz(path, spec.name)
    require_keys(data, MEDMNIST_KEYS, path, spec.name)
    splits = {
        s: validate_arrays(spec.name, s, data[f"{s}_images"], data[f"{s}_labels"], spec.num_classes)
        for s in ("train", "val", "test")
    }
    shapes = {s: a[0].shape[1:] for s, a in splits.items()}
    if len(set(shapes.values())) != 1:
        raise KerasDigitsError(f"{spec.name}: split image shapes differ in {path}: {shapes}")
    if spec.image_shape and shapes["train"][-1] != spec.image_shape[-1]:
        raise KerasDigitsError(
            f"{spec.name}: {path} holds {shapes['train'][-1]}-channel images, expected {spec.image_shape[-1]}"
        )
    return RawSplits(train=splits["train"], val=splits["val"], test=splits["test"], source=str(path))


def load_medmnist(spec: DatasetSpec, data_dir: Path | None) -> RawSplits:
    """data dir → ~/.medmnist → download from MedMNIST's URL (MD5-checked) → error."""
    fname = spec.files[0]
    md5 = spec.checksums.get(fname, "").removeprefix("md5:")
    looked: list[Path] = []
    if data_dir is not None:
        local = data_dir / fname
        looked.append(local)
        if local.is_file():
            raw = read_medmnist_npz(local, spec)
            if md5 and file_md5(local) != md5:
                warnings.warn(
                    f"{local} is not byte-identical to the published {fname} (md5 {md5}); "
                    "accepted because its structure is valid",
                    stacklevel=2,
                )
            return raw
    cached = medmnist_cache_dir() / fname
    looked.append(cached)
    if cached.is_file():
        if md5:  # the cache is only ever filled by a download: hold it to the published checksum
            verify_md5(cached, md5)
        return read_medmnist_npz(cached, spec)
    if offline():
        raise missing_file_error(spec, looked, "downloads are off")
    try:
        download_file(spec.download, cached, md5 or None)
    except KerasDigitsError as exc:
        raise missing_file_error(spec, looked, str(exc)) from None
    return read_medmnist_npz(cached, spec)
