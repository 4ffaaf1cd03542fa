"""Metrics on a split (accuracy, loss, macro P/R/F1, per class, confusion matrix, one-vs-rest AUC)
and `python -m keras_digits.evaluate --run DIR [--split test]`, which re-scores a saved run."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from keras_digits.cli import quiet_tensorflow, run_cli
from keras_digits.errors import KerasDigitsError
from keras_digits.io import read_json_object, write_json


def classification_metrics(y_true: np.ndarray, probs: np.ndarray, label_names: Sequence[str]) -> dict:
    """Every metric of the run format from labels and predicted probabilities."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support, roc_auc_score

    y_true = np.asarray(y_true).astype(int)
    probs = np.asarray(probs, dtype=np.float64)
    n_classes = probs.shape[1]
    labels = list(range(n_classes))
    pred = probs.argmax(axis=1)
    eps = 1e-7
    loss = float(-np.mean(np.log(np.clip(probs[np.arange(len(y_true)), y_true], eps, 1.0))))
    p, r, f, s = precision_recall_fscore_support(y_true, pred, labels=labels, zero_division=0)
    mp, mr, mf, _ = precision_recall_fscore_support(y_true, pred, labels=labels, average="macro", zero_division=0)
    cm = confusion_matrix(y_true, pred, labels=labels)
    auc = None
    present = np.unique(y_true)
    if n_classes > 2 and len(present) == n_classes:
        norm = probs / probs.sum(axis=1, keepdims=True)
        auc = float(roc_auc_score(y_true, norm, multi_class="ovr", labels=labels))
    elif n_classes == 2 and len(present) == 2:
        auc = float(roc_auc_score(y_true, probs[:, 1]))
    names = list(label_names) if len(label_names) == n_classes else [str(i) for i in labels]
    return {
        "n": int(len(y_true)),
        "accuracy": float((pred == y_true).mean()),
        "loss": loss,
        "precision": float(mp),
        "recall": float(mr),
        "f1": float(mf),
        "auc": auc,
        "per_class": [
            {"class_id": i, "label": names[i], "precision": float(p[i]), "recall": float(r[i]),
             "f1": float(f[i]), "support": int(s[i])}
            for i in labels
        ],
        "confusion_matrix": cm.tolist(),
    }


def predict_probs(model, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Softmax outputs for uint8 images, batched, no progress bar."""
    from keras_digits.data.pipeline import make_pipeline

    ds = make_pipeline(x, np.zeros(len(x), np.int32), batch_size).map(lambda a, b: a)
    return np.asarray(model.predict(ds, verbose=0))


def evaluate_model(model, x: np.ndarray, y: np.ndarray, label_names: Sequence[str], batch_size: int = 256) -> dict:
    """Run the model on a split and compute its metrics."""
    return classification_metrics(y, predict_probs(model, x, batch_size), label_names)


def load_run(run_dir: str | Path):
    """(config dict, keras model) of a finished run directory."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise KerasDigitsError(f"run directory not found: {run_dir}")
    cfg_path, model_path = run_dir / "config.json", run_dir / "best.keras"
    if not cfg_path.is_file():
        raise KerasDigitsError(f"{run_dir} is not a run directory (no config.json)")
    if not model_path.is_file():
        raise KerasDigitsError(f"{run_dir} has no best.keras (did training finish?)")
    import keras

    import keras_digits.models  # noqa: F401  (registers custom layers for deserialisation)

    try:
        model = keras.models.load_model(model_path, compile=False)
    except Exception as exc:
        raise KerasDigitsError(f"cannot load {model_path}: {exc}") from None
    return read_json_object(cfg_path), model


def rescore_run(run_dir: str | Path, splits: Sequence[str], data_dir: str | None = None) -> dict:
    """Recompute metrics of a saved run on the given splits and merge them into metrics.json."""
    from keras_digits.config import TrainConfig
    from keras_digits.data import load_for

    run_dir = Path(run_dir)
    cfg_dict, model = load_run(run_dir)
    cfg = TrainConfig.from_dict(cfg_dict)
    bundle = load_for(cfg, data_dir)
    metrics_path = run_dir / "metrics.json"
    metrics = read_json_object(metrics_path) if metrics_path.is_file() else {}
    for split in splits:
        x, y = bundle.split(split)
        metrics[split] = evaluate_model(model, x, y, bundle.label_names)
    write_json(metrics_path, metrics)
    return metrics


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m keras_digits.evaluate", description="Re-score a saved run.")
    p.add_argument("--run", required=True, help="run directory written by keras_digits.train")
    p.add_argument("--split", action="append", choices=("train", "val", "test"),
                   help="split(s) to score (repeatable; default test)")
    p.add_argument("--data-dir", help="override the run's data directory")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_tensorflow()
    splits = args.split or ["test"]
    metrics = rescore_run(args.run, splits, args.data_dir)
    for split in splits:
        m = metrics[split]
        auc = "" if m["auc"] is None else f"  auc {m['auc']:.4f}"
        print(f"{split}: accuracy {m['accuracy']:.4f}  loss {m['loss']:.4f}  macro-F1 {m['f1']:.4f}{auc}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
