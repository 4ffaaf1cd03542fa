"""Large npz files read without holding a split in memory: a one-time conversion of each array to an
uncompressed .npy file in a cache folder (streamed out of the zip in blocks), then opened memory-mapped.

A memory-mapped split is an `np.memmap`: slicing it reads only those rows from disk, and the tf.data
pipelines gather each batch from it (keras_digits.data.pipeline), so a 16 GB split trains in a few
hundred MB of process memory; the operating system's page cache does the rest.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Sequence

import numpy as np

from keras_digits.errors import KerasDigitsError

CACHE_ENV = "KERAS_DIGITS_CACHE"
FORMAT = 1  # bump when the cache layout changes: older caches are rebuilt
BLOCK = 16 << 20  # bytes copied per read while converting


def cache_root() -> Path:
    """$KERAS_DIGITS_CACHE, else ~/.cache/keras_digits."""
    value = os.environ.get(CACHE_ENV)
    return Path(value).expanduser() if value else Path.home() / ".cache" / "keras_digits"


def _source_stamp(path: Path) -> dict:
    st = path.stat()
    return {"source": str(path.resolve()), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns, "format": FORMAT}


def _member_header(zf: zipfile.ZipFile, key: str, path: Path):
    """(open member stream, shape, dtype) of array `key`, reading only its .npy header."""
    try:
        fh = zf.open(f"{key}.npy")
        version = np.lib.format.read_magic(fh)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read(fh)
    except (KeyError, ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise KerasDigitsError(f"{path}: cannot read array {key!r} ({exc})") from None
    if fortran and len(shape) > 1:
        raise KerasDigitsError(f"{path}: array {key!r} is stored in Fortran order; expected C order")
    return fh, tuple(shape), dtype


def _copy_member(zf: zipfile.ZipFile, key: str, path: Path, dest: Path, images: bool) -> None:
    """Stream one array of the zip into an uncompressed .npy at `dest` (grey (N, H, W) images get their
    channel axis: (N, H, W, 1), the same bytes)."""
    fh, shape, dtype = _member_header(zf, key, path)
    with fh:
        if images and dtype != np.uint8:
            raise KerasDigitsError(f"{path}: {key} must be uint8, got {dtype}")
        out_shape = shape + (1,) if images and len(shape) == 3 else shape
        header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": out_shape}
        remaining = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        with open(dest, "wb") as out:
            np.lib.format.write_array_header_2_0(out, header)
            while remaining > 0:
                block = fh.read(min(BLOCK, remaining))
                if not block:
                    raise KerasDigitsError(f"{path}: array {key!r} is truncated ({remaining} bytes missing)")
                out.write(block)
                remaining -= len(block)


def needed_bytes(path: Path, keys: Sequence[str]) -> int:
    """Uncompressed size of the arrays `keys` of an npz (what the cache will take on disk)."""
    try:
        with zipfile.ZipFile(path) as zf:
            return sum(zf.getinfo(f"{k}.npy").file_size for k in keys)
    except (zipfile.BadZipFile, OSError) as exc:
        raise KerasDigitsError(f"{path} is not a readable npz file ({exc})") from None
    except KeyError as exc:
        raise KerasDigitsError(f"{path} lacks array {exc}") from None


def cached_arrays(path: Path, keys: Sequence[str], image_keys: Sequence[str], tag: str,
                  verbose: bool = True) -> dict[str, np.ndarray]:
    """The arrays `keys` of the npz at `path`: image arrays memory-mapped (read-only) from the cache,
    the others (labels) loaded. Converts once per source file (rebuilt when the file changes)."""
    path = Path(path)
    folder = cache_root() / "npz" / tag
    stamp = _source_stamp(path)
    manifest = folder / "manifest.json"
    try:
        fresh = json.loads(manifest.read_text()) == stamp
    except (OSError, ValueError):
        fresh = False
    if not fresh:
        _convert(path, keys, image_keys, folder, stamp, verbose)
    out = {}
    for key in keys:
        try:
            out[key] = np.load(folder / f"{key}.npy", mmap_mode="r" if key in image_keys else None,
                               allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise KerasDigitsError(f"the cache {folder} is damaged ({exc}); delete it and run again") from None
    return out


def _convert(path: Path, keys: Sequence[str], image_keys: Sequence[str], folder: Path, stamp: dict,
             verbose: bool) -> None:
    need = needed_bytes(path, keys)
    folder.parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder.parent).free
    if free < need + (64 << 20):
        raise KerasDigitsError(
            f"converting {path} for memory-mapped reading needs {need / 2**30:.1f} GiB in {folder.parent}, "
            f"which has {free / 2**30:.1f} GiB free; point ${CACHE_ENV} at a larger disk")
    if verbose:
        print(f"converting {path.name} once to uncompressed arrays in {folder} ({need / 2**30:.2f} GiB) ...",
              flush=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        try:
            zf = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as exc:
            raise KerasDigitsError(f"{path} is not a readable npz file ({exc})") from None
        with zf:
            for key in keys:
                _copy_member(zf, key, path, tmp / f"{key}.npy", images=key in image_keys)
        (tmp / "manifest.json").write_text(json.dumps(stamp))  # written last: marks a complete cache
        if folder.exists():
            shutil.rmtree(folder)
        try:
            os.replace(tmp, folder)
        except OSError:
            if not (folder / "manifest.json").is_file():  # another process converting the same file won
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
