"""The result files evaluate adds to a run (metrics-*.json, robustness-*.json): each read, or named as
damaged, so a page never leaves one out without saying so."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

COLLAPSE_FILE = "collapse.json"  # the collapse detector's signs (keras_digits.training.collapse), if any


def _usable(kind: str, data: Any) -> bool:
    if not isinstance(data, dict):
        return False
    if kind == "metrics":
        return any(isinstance(s, dict) and isinstance(s.get("accuracy"), (int, float)) for s in data.values())
    rows = data.get("rows")
    return isinstance(rows, list) and any(
        isinstance(x, dict) and isinstance(x.get("accuracy"), (int, float)) for x in rows
    )


def result_files(run_dir: str | Path, kind: str) -> tuple[list[tuple[Path, dict]], list[str]]:
    """(path, data) of each usable `kind` file ("metrics" or "robustness") of a run, and a line for each
    damaged one ("NAME (why)")."""
    good, damaged = [], []
    for path in sorted(Path(run_dir).glob(f"{kind}-*.json")):
        if not path.is_file():
            damaged.append(f"{path.name} (not a file)")
            continue
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError, RecursionError) as exc:
            damaged.append(f"{path.name} (unreadable: {type(exc).__name__})")
            continue
        if not _usable(kind, data):
            damaged.append(f"{path.name} (holds no scores in the expected layout)")
            continue
        good.append((path, data))
    return good, damaged


def damaged_results(run_dir: str | Path) -> list[str]:
    """Every damaged result file of a run, as 'NAME (why)'."""
    return result_files(run_dir, "metrics")[1] + result_files(run_dir, "robustness")[1]


def read_collapse(run_dir: str | Path) -> dict[str, Any] | None:
    """The run's collapse.json: the epochs where the collapse detector saw a sign (None: it saw none, or
    the file is unreadable)."""
    path = Path(run_dir) / COLLAPSE_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("epochs"), list) else None
