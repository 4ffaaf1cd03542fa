"""What a run records about its data (dataset.json), and the fingerprints that tell later commands
whether they are looking at the same data: a short SHA-256 of each split's images and labels."""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from keras_digits.data.splits import DataBundle

SPLITS = ("train", "val", "test")


def split_fingerprint(x: np.ndarray, y: np.ndarray) -> str:
    """16 hex digits of SHA-256 over a split's shape, pixels and labels (order-sensitive)."""
    h = hashlib.sha256()
    h.update(repr((tuple(x.shape), str(x.dtype))).encode())
    h.update(np.ascontiguousarray(x).data)
    h.update(np.ascontiguousarray(np.asarray(y, dtype=np.int64)).data)
    return h.hexdigest()[:16]


def dataset_record(bundle: DataBundle) -> dict[str, Any]:
    """The run's dataset.json: name, source, input shape, label names, split sizes and fingerprints."""
    return {
        "name": bundle.name,
        "source": bundle.source,
        "input_shape": list(bundle.input_shape),
        "num_classes": bundle.num_classes,
        "label_names": list(bundle.label_names),
        "sizes": {s: int(len(bundle.split(s)[1])) for s in SPLITS},
        "fingerprints": {s: split_fingerprint(*bundle.split(s)) for s in SPLITS},
    }
