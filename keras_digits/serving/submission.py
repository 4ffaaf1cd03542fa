"""Contest submission files (ids or Kaggle layout) from predictions."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

from keras_digits.errors import KerasDigitsError
from keras_digits.utils.io import atomic_path

FORMATS = {"ids": ("id", "label"), "kaggle": ("ImageId", "Label")}


def submission_id(stem: str, fmt: str, width: int) -> tuple[str, tuple]:
    """(id text, sort key) for a file stem."""
    numeric = stem.isascii() and stem.isdigit()
    if fmt == "kaggle":
        if not numeric:
            raise KerasDigitsError(f"kaggle format needs numeric file names (1.png, 2.png, ...), got {stem!r}")
        return str(int(stem)), (0, int(stem), "")
    if numeric:
        return (f"{int(stem):0{width}d}" if width else stem), (0, int(stem), stem)
    return stem, (1, 0, stem)


def make_rows(predictions, fmt: str = "ids", width: int = 5, label: str = "name") -> list[tuple[str, str]]:
    """Sorted (id, label) rows; duplicate ids are an error."""
    keyed, seen = [], {}
    for pred in predictions:
        ident, key = submission_id(pred.file.stem, fmt, width)
        if ident in seen:
            raise KerasDigitsError(f"duplicate id {ident}: {seen[ident]} and {pred.file}")
        seen[ident] = pred.file
        keyed.append((key, ident, pred.label if label == "name" else str(pred.class_id)))
    keyed.sort()
    return [(ident, value) for _, ident, value in keyed]


def write_submission(rows: Sequence[tuple[str, str]], path: str | Path, fmt: str = "ids") -> None:
    """Write the header and rows atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(FORMATS[fmt])
        writer.writerows(rows)
