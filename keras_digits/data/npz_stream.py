"""Large npz files read without holding a split in memory: a one-time conversion of each array to an
uncompressed .npy file in a cache folder (streamed out of the zip in blocks), then opened memory-mapped.

A memory-mapped split is an `np.memmap`: slicing it reads only those rows from disk, and the tf.data
pipelines gather each batch from it (keras_digits.data.pipeline), so a 16 GB split trains in a few
hundred MB of process memory; the operating system's page cache does the rest.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import sys
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

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
    if dtype.hasobject:  # its bytes are a pickle: never copied, never unpickled
        raise KerasDigitsError(f"{path}: array {key!r} holds Python objects (dtype {dtype}); expected numbers")
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
                try:
                    block = fh.read(min(BLOCK, remaining))
                except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
                    raise KerasDigitsError(f"{path}: array {key!r} is corrupt ({exc}); download it again") from None
                if not block:
                    raise KerasDigitsError(f"{path}: array {key!r} is truncated ({remaining} bytes missing)")
                try:
                    out.write(block)
                except OSError as exc:
                    raise KerasDigitsError(
                        f"cannot write the converted copy of {path} to {dest.parent} ({exc}); "
                        f"point ${CACHE_ENV} at a disk with room"
                    ) from None
                remaining -= len(block)


def array_shapes(path: Path, keys: Sequence[str]) -> dict[str, tuple[int, ...]]:
    """The shapes of the arrays `keys` of an npz, read from their .npy headers alone (nothing converted)."""
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise KerasDigitsError(f"{path} is not a readable npz file ({exc})") from None
    shapes = {}
    with zf:
        for key in keys:
            fh, shapes[key], _ = _member_header(zf, key, path)
            fh.close()
    return shapes


def needed_bytes(path: Path, keys: Sequence[str]) -> int:
    """Uncompressed size of the arrays `keys` of an npz (what the cache will take on disk)."""
    try:
        with zipfile.ZipFile(path) as zf:
            return sum(zf.getinfo(f"{k}.npy").file_size for k in keys)
    except (zipfile.BadZipFile, OSError) as exc:
        raise KerasDigitsError(f"{path} is not a readable npz file ({exc})") from None
    except KeyError as exc:
        raise KerasDigitsError(f"{path} lacks array {exc}") from None


def _drop_older_versions(folder: Path, stamp: dict) -> None:
    """Delete the caches of earlier versions of the same source file (a process still reading one keeps
    its open memory maps: on POSIX the data lives until they are closed)."""
    tag = folder.name.rsplit("-", 1)[0]
    for other in folder.parent.glob(f"{tag}-*"):
        if other == folder or not other.is_dir():
            continue
        try:
            old = json.loads((other / "manifest.json").read_text())
        except (OSError, ValueError):
            continue
        if isinstance(old, dict) and old.get("source") == stamp["source"]:
            shutil.rmtree(other, ignore_errors=True)


@contextlib.contextmanager
def _conversion_lock(path: Path):
    """An exclusive lock while one process converts (others wait, then find the cache ready)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _fresh(folder: Path, stamp: dict) -> bool:
    try:
        return json.loads((folder / "manifest.json").read_text()) == stamp
    except (OSError, ValueError):
        return False


def cached_arrays(
    path: Path,
    keys: Sequence[str],
    image_keys: Sequence[str],
    tag: str,
    verbose: bool = True,
    check: Callable[[dict[str, np.ndarray]], None] | None = None,
) -> dict[str, np.ndarray]:
    """The arrays `keys` of the npz at `path`: image arrays memory-mapped (read-only) from the cache,
    the others (labels) loaded. Converted once per source file: the cache folder is named after the
    file's path, size and modification time, so a changed or another file gets its own folder and a
    folder in use is never replaced; concurrent runs wait for the one converting. `check(arrays)` may
    refuse the file by raising: its cache folder is then deleted, so a refused file leaves no copy."""
    path = Path(path)
    stamp = _source_stamp(path)
    key = hashlib.sha256(json.dumps(stamp, sort_keys=True).encode()).hexdigest()[:12]
    root = cache_root() / "npz"
    folder = root / f"{tag}-{key}"
    if not _fresh(folder, stamp):
        with _conversion_lock(root / f".{tag}-{key}.lock"):
            if not _fresh(folder, stamp):  # another process may have finished it while we waited
                _convert(path, keys, image_keys, folder, stamp, verbose)
    try:
        out = {}
        for name in keys:
            try:
                out[name] = np.load(
                    folder / f"{name}.npy", mmap_mode="r" if name in image_keys else None, allow_pickle=False
                )
            except (OSError, ValueError) as exc:
                raise KerasDigitsError(f"the cache {folder} is damaged ({exc}); it was deleted: run again") from None
        if check is not None:
            check(out)
    except Exception:  # a damaged cache, or a file the caller refuses: no copy stays behind
        out = {}  # drop the memory maps before deleting the files they map
        with _conversion_lock(root / f".{tag}-{key}.lock"):
            shutil.rmtree(folder, ignore_errors=True)
        raise
    return out


def _convert(
    path: Path, keys: Sequence[str], image_keys: Sequence[str], folder: Path, stamp: dict, verbose: bool
) -> None:
    """Under the conversion lock: stream the arrays into a temporary folder, then rename it into place."""
    for stale in folder.parent.glob(f".{folder.name}-*"):  # a killed conversion's leftovers (we hold the lock)
        shutil.rmtree(stale, ignore_errors=True)
    need = needed_bytes(path, keys)
    free = shutil.disk_usage(folder.parent).free
    if free < need + (64 << 20):
        raise KerasDigitsError(
            f"converting {path} for memory-mapped reading needs {need / 2**30:.1f} GiB in {folder.parent}, "
            f"which has {free / 2**30:.1f} GiB free; point ${CACHE_ENV} at a larger disk"
        )
    if verbose:
        print(
            f"converting {path.name} once to uncompressed arrays in {folder} ({need / 2**30:.2f} GiB) ...",
            file=sys.stderr,
            flush=True,
        )
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
        shutil.rmtree(folder, ignore_errors=True)  # an incomplete folder (no fresh manifest) of this stamp
        os.replace(tmp, folder)
        _drop_older_versions(folder, stamp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
