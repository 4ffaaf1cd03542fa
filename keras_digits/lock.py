"""One process at a time per output folder: a lock file beside the folder, naming its holder.

`hold(path, what)` creates `<parent>/.<name>.lock` with O_CREAT | O_EXCL (atomic on local and NFS v3+
file systems) holding the holder's pid, host, process start time and command. A second process gets
one clear error naming the holder. A lock whose holder is gone (same host, and no process with that
pid and start time) is stale: it is renamed away (only one contender wins the rename) and taken over.
A lock held on another host cannot be checked from here; its error says which file to delete if
that process is known to be dead. The lock sits beside the folder, not inside it, so a folder that is
replaced by a rename (train --overwrite, export --overwrite) stays locked throughout.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any, Iterator

from keras_digits.errors import KerasDigitsError


def lock_path(path: str | os.PathLike) -> Path:
    """The lock file that guards folder `path`."""
    path = Path(path)
    return path.parent / f".{path.name}.lock"


def _process_start(pid: int) -> float | None:
    """Start time of a live process, or None when there is no such process."""
    import psutil

    try:
        return round(psutil.Process(pid).create_time(), 2)
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None
    except psutil.AccessDenied:
        return -1.0  # alive, start time unknown


def _me() -> dict[str, Any]:
    return {"pid": os.getpid(), "host": socket.gethostname(), "started": _process_start(os.getpid()),
            "since": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join(sys.argv)[:500]}


def _read(lock: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(lock.read_text())
        return data if isinstance(data, dict) else {}
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}  # half-written or garbage: judged by age below


def _is_stale(holder: dict[str, Any], lock: Path) -> bool:
    """True when the holder of a lock on this host is gone."""
    if not holder:  # unreadable content: stale once older than a writer could take to fill it
        try:
            return time.time() - lock.stat().st_mtime > 10
        except FileNotFoundError:
            return True
    if holder.get("host") != socket.gethostname():
        return False
    pid, started = holder.get("pid"), holder.get("started")
    if not isinstance(pid, int):
        return True
    now = _process_start(pid)
    if now is None:
        return True
    return started is not None and now not in (-1.0, started)  # the pid was reused by another process


def acquire(path: str | os.PathLike, what: str = "folder") -> Path:
    """Take the lock of folder `path` (see the module doc); returns the lock file."""
    lock = lock_path(path)
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise KerasDigitsError(f"cannot create {lock.parent}: {exc.strerror or exc}") from None
    for _ in range(5):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _read(lock)
            if holder is None:
                continue  # released meanwhile: try again
            mine = holder and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname()
            if mine or _is_stale(holder, lock):  # mine: kept across os.execv (the tuner's memory restart)
                aside = lock.with_name(f"{lock.name}.stale-{os.getpid()}")
                with contextlib.suppress(FileNotFoundError):
                    os.replace(lock, aside)  # only one contender moves a given lock away
                    aside.unlink()
                continue
            who = f"pid {holder.get('pid')} on {holder.get('host')}" if holder else "another process"
            since = f" since {holder['since']}" if holder.get("since") else ""
            raise KerasDigitsError(f"{what} {path} is in use by {who}{since}; wait for it to finish or use another "
                                   f"one (if that process is gone, delete {lock})")
        except OSError as exc:
            raise KerasDigitsError(f"cannot lock {what} {path}: {exc.strerror or exc} ({lock})") from None
        with os.fdopen(fd, "w") as fh:
            json.dump(_me(), fh)
        return lock
    raise KerasDigitsError(f"could not take the lock {lock}: other processes keep taking it")


def release(lock: Path) -> None:
    """Remove a lock this process holds (a lock taken over by another process is left alone)."""
    holder = _read(lock)
    if holder is not None and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()


@contextlib.contextmanager
def hold(path: str | os.PathLike, what: str = "folder") -> Iterator[Path]:
    """Hold the lock of folder `path` for the block."""
    lock = acquire(path, what)
    try:
        yield lock
    finally:
        release(lock)
