"""One process at a time per output folder: a lock file beside the folder, held with an OS file lock.

`hold(path, what)` opens `<parent>/.<name>.lock` and takes an exclusive `fcntl.flock` on it, then
writes the holder's pid, host, start time and command into it (for the error message only). The
kernel releases the lock when the holder exits, however it dies (SIGKILL included), so a lock left
by a dead process is simply free: no pid guessing, which would be wrong across containers that share
a volume. A second process gets one clear error naming the holder. The lock sits beside the folder,
not inside it, so a folder that is replaced by a rename (train --overwrite, export --overwrite) stays
locked throughout; the path is made absolute first, so `.`, `$PWD` and a relative path share one
lock. Local file systems and NFS (where Linux maps flock onto POSIX locks) are supported.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from keras_digits.errors import KerasDigitsError

_HELD: dict[Path, int] = {}  # lock file -> open descriptor holding its flock


def lock_path(path: str | os.PathLike) -> Path:
    """The lock file that guards folder `path`."""
    path = Path(os.path.abspath(path))
    return path.parent / f".{path.name}.lock"


def _holder(fd: int) -> dict[str, Any]:
    try:
        data = json.loads(os.pread(fd, 65536, 0).decode() or "{}")
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def acquire(path: str | os.PathLike, what: str = "folder") -> Path:
    """Take the lock of folder `path` (see the module doc); returns the lock file."""
    lock = lock_path(path)
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise KerasDigitsError(f"cannot create {lock.parent}: {exc.strerror or exc}") from None
    for _ in range(20):
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise KerasDigitsError(f"cannot lock {what} {path}: {exc.strerror or exc} ({lock})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            who = f"pid {holder.get('pid')} on {holder.get('host')}" if holder else "another process"
            since = f" since {holder['since']}" if holder.get("since") else ""
            raise KerasDigitsError(
                f"{what} {path} is in use by {who}{since}; wait for it to finish or use another one"
            ) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if not same:  # released (and unlinked) between our open and our flock: take the new file
            os.close(fd)
            continue
        me = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": " ".join(sys.argv)[:500],
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        _HELD[lock] = fd
        return lock
    raise KerasDigitsError(f"could not take the lock {lock}: other processes keep taking it")


def release(lock: Path) -> None:
    """Give up a lock this process holds: the file is removed while still locked, then unlocked."""
    fd = _HELD.pop(lock, None)
    if fd is None:
        return
    with contextlib.suppress(FileNotFoundError):
        lock.unlink()
    os.close(fd)


@contextlib.contextmanager
def hold(path: str | os.PathLike, what: str = "folder") -> Iterator[Path]:
    """Hold the lock of folder `path` for the block."""
    lock = acquire(path, what)
    try:
        yield lock
    finally:
        release(lock)
