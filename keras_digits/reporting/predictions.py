"""What a run keeps of its predictions, so that its report is a pure function of the run directory:
`predictions-<split>.npz` (every image's softmax output and true label: ROC and precision-recall
curves) and `examples-<split>.npz` (a few images: the most confident mistakes and correctly classified
examples per class, for the galleries). Both are small: 10,000 MNIST test images make ~200 kB and
~60 kB (compressed)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from keras_digits.utils.io import atomic_path

MISTAKES = 24  # most confident mistakes kept
PER_CLASS = 4  # correctly classified examples kept per class


def select_examples(
    probs: np.ndarray, y: np.ndarray, mistakes: int = MISTAKES, per_class: int = PER_CLASS
) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the most confident mistakes (most confident first) and of correct examples per class
    (the most confident of each class first)."""
    pred = probs.argmax(axis=1)
    conf = probs.max(axis=1)
    wrong = np.flatnonzero(pred != y)
    wrong = wrong[np.argsort(-conf[wrong], kind="stable")][:mistakes]
    right = []
    for c in range(probs.shape[1]):
        idx = np.flatnonzero((pred == y) & (y == c))
        right += list(idx[np.argsort(-conf[idx], kind="stable")][:per_class])
    return wrong, np.asarray(right, dtype=np.int64)


def _save_npz(path: Path, **arrays: np.ndarray) -> None:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.getvalue())


def save_predictions(
    run_dir: str | Path, split: str, x: np.ndarray, y: np.ndarray, probs: np.ndarray, prefix: str = ""
) -> None:
    """Write `<prefix>predictions-<split>.npz` and `<prefix>examples-<split>.npz` into the run directory."""
    run_dir = Path(run_dir)
    probs = np.nan_to_num(np.asarray(probs, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    y = np.asarray(y).astype(np.int64)
    _save_npz(run_dir / f"{prefix}predictions-{split}.npz", probs=probs, y=y)
    wrong, right = select_examples(probs, y)
    keep = np.concatenate([wrong, right]).astype(np.int64)
    _save_npz(
        run_dir / f"{prefix}examples-{split}.npz",
        index=keep,
        images=np.asarray(x)[keep],
        y=y[keep],
        probs=probs[keep],
        mistakes=np.asarray(len(wrong)),
    )


def load_npz(path: str | Path) -> dict[str, np.ndarray] | None:
    """The arrays of an .npz file, or None when it is missing or unreadable."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (OSError, ValueError):
        return None
