"""Reading a run's history.csv."""

from __future__ import annotations

import csv
from pathlib import Path


def read_history(path: str | Path) -> dict[str, list[float]]:
    """history.csv (Keras CSVLogger) as columns."""
    cols: dict[str, list[float]] = {}
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            for k, v in row.items():
                try:
                    cols.setdefault(k, []).append(float(v))
                except (TypeError, ValueError):
                    cols.setdefault(k, []).append(float("nan"))
    return cols
