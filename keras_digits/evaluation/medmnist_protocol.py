"""MedMNIST's evaluation protocol (medmnist/evaluator.py: getACC, getAUC) on a finished run's saved
predictions, so a run can be set beside the benchmark's table: ACC and AUC on the official splits.

- multi-class and ordinal-regression: ACC = argmax accuracy; AUC = the mean over classes of each
  class's one-vs-rest ROC AUC. RetinaMNIST's five ordinal grades are trained as five classes, as the
  benchmark's own baselines do.
- binary-class: ACC thresholds the positive class's probability at 0.5 (for a two-class softmax the
  argmax, but for exact ties); AUC is the positive class's ROC AUC.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

PROTOCOL = "MedMNIST v3 evaluator: ACC and AUC (getACC, getAUC) on the official split"


def medmnist_scores(y: np.ndarray, probs: np.ndarray, task: str) -> dict[str, float | None]:
    """{"ACC", "AUC"} of softmax outputs `probs` for labels `y`, as MedMNIST's evaluator computes them
    (AUC None where a class is absent from `y`)."""
    from sklearn.metrics import roc_auc_score

    y = np.asarray(y).astype(int).ravel()
    probs = np.asarray(probs, dtype=np.float64)
    if task == "binary-class":
        acc = float(np.mean((probs[:, -1] > 0.5) == y))
        auc = float(roc_auc_score(y, probs[:, -1])) if len(np.unique(y)) == 2 else None
        return {"ACC": acc, "AUC": auc}
    if task not in ("multi-class", "ordinal-regression"):
        raise ValueError(f"no single-label MedMNIST protocol for task {task!r}")
    acc = float(np.mean(probs.argmax(axis=1) == y))
    present = [i for i in range(probs.shape[1]) if 0 < (y == i).sum() < len(y)]
    auc = (
        float(np.mean([roc_auc_score(y == i, probs[:, i]) for i in range(probs.shape[1])]))
        if len(present) == probs.shape[1]
        else None
    )
    return {"ACC": acc, "AUC": auc}


def protocol_block(run_dir: str | Path, dataset: str, size: int | None, task: str, splits=("val", "test")) -> dict:
    """metrics.json's "medmnist" entry: the protocol's ACC and AUC on each scored split."""
    from keras_digits.reporting.predictions import load_npz

    out: dict = {
        "protocol": PROTOCOL,
        "subset": dataset,
        "size": int(size or 28),
        "task": task,
        "trained_as": "single-label softmax over the classes",
    }
    for split in splits:
        data = load_npz(Path(run_dir) / f"predictions-{split}.npz")
        if data is not None:
            out[split] = medmnist_scores(data["y"], data["probs"], task)
    return out


def protocol_line(block: dict) -> str:
    """One line for the console and report.md."""
    parts = []
    for split in ("val", "test"):
        if split in block:
            s = block[split]
            auc = "n/a" if s["AUC"] is None else f"{s['AUC']:.3f}"
            parts.append(f"{split} ACC {s['ACC']:.3f} AUC {auc}")
    return f"MedMNIST protocol ({block['subset']}, {block['size']} px): " + "; ".join(parts)
