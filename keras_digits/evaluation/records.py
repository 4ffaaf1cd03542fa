"""What a run directory records about itself: whether and how it ended (metrics.json), its data (dataset.json)
and the label names of its model. Read by everything that opens a finished run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from keras_digits.utils.io import read_json_object


def ended(run_dir: Path) -> dict[str, Any] | None:
    """The metrics.json of a run that ended (finished or diverged), else None."""
    path = Path(run_dir) / "metrics.json"
    if not path.is_file():
        return None
    return read_json_object(path, "run metrics")


def dataset_record(run_dir: Path) -> dict[str, Any]:
    """The run's dataset.json ({} for runs that have none)."""
    path = Path(run_dir) / "dataset.json"
    return read_json_object(path, "run dataset record") if path.is_file() else {}


def model_label_names(record: dict[str, Any], num_classes: int) -> list[str]:
    """The label names a run's model was trained with (from its dataset record), else the class ids."""
    return [str(n) for n in record.get("label_names") or range(num_classes)]


def is_diverged(metrics: dict[str, Any] | None) -> bool:
    return bool(metrics) and metrics.get("status") == "diverged"


def divergence_text(metrics: dict[str, Any]) -> str:
    """'epoch 2, batch 7 (loss nan)' from a diverged run's metrics."""
    where = metrics.get("diverged") or {}
    batch = f", batch {where['batch']}" if where.get("batch") else ""
    return f"epoch {where.get('epoch', '?')}{batch} (loss {where.get('loss', '?')})"
