"""Atomic file writes: everything goes to a temporary name first, then is renamed into place."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix if suffix is None else suffix
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    tmp_path.chmod(0o666 & ~current_umask())  # mkstemp makes it private (0600); give it a normal file's mode
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _check_parent(path: Path, what: str) -> None:
    from keras_digits.errors import KerasDigitsError

    for ancestor in path.parents:
        if ancestor.exists() or ancestor.is_symlink():
            if not ancestor.is_dir():
                raise KerasDigitsError(f"{what} {path}: {ancestor} is a file, not a folder")
            if not os.access(ancestor, os.W_OK | os.X_OK):
                raise KerasDigitsError(f"{what} {path}: cannot write in {ancestor} (permission denied)")
            return


def check_output_dir(path: str | os.PathLike, what: str = "output folder") -> Path:
    """Refuse, as one clear error, a folder that cannot be created or written: an existing file in its
    place, a file among its parents, or a parent this user cannot write."""
    from keras_digits.errors import KerasDigitsError

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise KerasDigitsError(f"{what} {path} is a file, not a folder")
    if path.is_dir() and not os.access(path, os.W_OK | os.X_OK):
        raise KerasDigitsError(f"{what} {path}: cannot write in it (permission denied)")
    if not path.exists():
        _check_parent(path, what)
    return path


def check_output_file(path: str | os.PathLike, what: str = "output file") -> Path:
    """Refuse, as one clear error, a file path that is a folder or whose folder cannot be written."""
    from keras_digits.errors import KerasDigitsError

    path = Path(path)
    if path.is_dir():
        raise KerasDigitsError(f"{what} {path} is a folder; give a file name")
    _check_parent(path, what)
    return path


def clean_stale_temps(folder: str | os.PathLike, name: str = "*") -> int:
    """Remove the hidden temporaries that `atomic_path` / `atomic_dir` leave in `folder` for files or
    folders called `name` (default: any) when their process is killed; call only while holding the
    lock of what they belong to. Returns how many were removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    stale = [p for pattern in (f".{name}.*.tmp", f".{name}.*.tmp.*", f".{name}.old-*") for p in folder.glob(pattern)]
    for item in stale:
        shutil.rmtree(item, ignore_errors=True) if item.is_dir() else item.unlink(missing_ok=True)
    return len(stale)


def current_umask() -> int:
    """The process's umask (read by setting and restoring it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def replace_dir(new: str | os.PathLike, path: str | os.PathLike) -> None:
    """Move the finished folder `new` onto `path`, replacing what is there (renames; the old one is
    moved aside first and deleted only once `new` is in place). Where `path` is a symbolic link to a folder,
    the folder it points to is replaced and the link stays."""
    new, path = Path(new), Path(path)
    if path.is_symlink() and (path.resolve().is_dir() or not path.resolve().exists()):
        path = path.resolve()
    old = None
    if path.exists():
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        os.replace(path, old)
    os.replace(new, path)
    if old is not None:
        if old.is_symlink():
            old.unlink()
        else:
            shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory beside `path`; move it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    tmp.chmod(0o777 & ~current_umask())  # mkdtemp makes it private (0700); give it a normal folder's mode
    try:
        yield tmp
        replace_dir(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write text atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON (indented, sorted keys kept in insertion order) atomically."""
    write_text(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def read_json_object(path: str | os.PathLike, what: str = "", lenient: bool = False) -> dict[str, Any]:
    """Read a JSON file that must hold an object; bad JSON is a KerasDigitsError naming the file.
    `lenient`: a missing, unreadable or malformed file reads as {} (bookkeeping files another process
    may be rewriting)."""
    from keras_digits.errors import KerasDigitsError

    label = f"{what} {path}".strip()
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError, RecursionError) as exc:  # RecursionError: absurdly deep nesting
        if lenient:
            return {}
        if isinstance(exc, OSError):
            raise
        reason = "nested too deeply" if isinstance(exc, RecursionError) else exc
        raise KerasDigitsError(f"{label} is not valid JSON: {reason}") from None
    if not isinstance(data, dict) and lenient:
        return {}
    if not isinstance(data, dict):
        raise KerasDigitsError(f"{label} must hold a JSON object")
    return data


def _json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def save_figure(fig: Any, path: str | os.PathLike) -> None:
    """Save a matplotlib figure atomically."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight", format=Path(path).suffix.lstrip(".") or "png")
