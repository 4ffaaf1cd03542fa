"""The Keras callbacks of a training run: learning-rate schedules, the atomic best-model checkpoint, the
learning-rate log, the divergence guard, and `make_callbacks`, which puts them together."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from keras_digits.config import TrainConfig
from keras_digits.finite import model_is_finite
from keras_digits.io import atomic_path

BACKUP, FINE_TUNE_BACKUP = "backup", "backup-fine-tune"  # BackupAndRestore folders of the two phases


# ---------------------------------------------------------------------------- schedules
def schedule_lr(cfg: TrainConfig, epoch: int, base_lr: float | None = None) -> float:
    """Learning rate for an epoch (0-based) under the step or cosine schedule."""
    base = cfg.lr if base_lr is None else base_lr
    if cfg.schedule == "step":  # x0.1 at 50% and 75% of the epochs (the MedMNIST recipe)
        return base * (0.1 ** sum(epoch >= cfg.epochs * f for f in (0.5, 0.75)))
    if cfg.schedule == "cosine":
        warm = cfg.warmup_epochs
        if epoch < warm:
            return base * (epoch + 1) / (warm + 1)
        span = max(1, cfg.epochs - warm)
        return base * 0.5 * (1 + math.cos(math.pi * (epoch - warm) / span))
    return base


def schedule_callbacks(cfg: TrainConfig) -> list:
    """Callbacks that implement --schedule."""
    import keras

    if cfg.schedule == "plateau":
        return [keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.1, patience=max(1, cfg.patience // 2),
                                                  min_lr=cfg.lr * 1e-3, verbose=cfg.verbose)]
    if cfg.schedule in ("step", "cosine"):
        return [keras.callbacks.LearningRateScheduler(lambda e, lr: schedule_lr(cfg, e), verbose=0)]
    return []


# ---------------------------------------------------------------------------- callbacks
def _finite(value: Any) -> bool:
    try:
        return bool(np.isfinite(float(value)))
    except (TypeError, ValueError):
        return False


def _atomic_checkpoint_cls():
    import keras

    class AtomicCheckpoint(keras.callbacks.Callback):
        """Save the model with the best monitored value to `path` via a temporary file; a model whose
        loss or weights are not finite is never saved."""

        def __init__(self, path: Path, monitor: str = "val_accuracy"):
            super().__init__()
            self.path, self.monitor = Path(path), monitor
            self.best = -np.inf

        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            value = logs.get(self.monitor)
            if value is None or not _finite(value) or value <= self.best:
                return
            if not _finite(logs.get("loss", 0.0)) or not model_is_finite(self.model):
                return
            self.best = float(value)
            with atomic_path(self.path) as tmp:
                self.model.save(tmp)

    return AtomicCheckpoint


def _epoch_log_cls():
    import time

    import keras

    class EpochLog(keras.callbacks.Callback):
        """Put the optimizer's learning rate and the epoch's wall time (training and validation) into each
        epoch's logs: history.csv columns `learning_rate` and `epoch_seconds`, whose sum over a run,
        resumed parts included, is the run's train_seconds."""

        def on_epoch_begin(self, epoch, logs=None):
            self._start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            if logs is None:
                return
            if "learning_rate" not in logs:
                logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
            logs["epoch_seconds"] = time.perf_counter() - getattr(self, "_start", time.perf_counter())

    return EpochLog


def _divergence_guard_cls():
    import keras

    class DivergenceGuard(keras.callbacks.Callback):
        """Stop training at the first non-finite training loss (or non-finite weights at an epoch's end)
        and remember where: `diverged` is then {"epoch", "batch", "loss"} (1-based), else None."""

        def __init__(self):
            super().__init__()
            self.diverged: dict[str, Any] | None = None
            self._epoch = 0

        def on_epoch_begin(self, epoch, logs=None):
            self._epoch = epoch

        def on_train_batch_end(self, batch, logs=None):
            loss = (logs or {}).get("loss")
            if self.diverged is None and loss is not None and not _finite(loss):
                self.diverged = {"epoch": self._epoch + 1, "batch": batch + 1, "loss": str(float(loss))}
                self.model.stop_training = True

        def on_epoch_end(self, epoch, logs=None):
            if self.diverged is None and not model_is_finite(self.model):
                self.diverged = {"epoch": epoch + 1, "batch": None, "loss": str((logs or {}).get("loss"))}
                self.model.stop_training = True

    return DivergenceGuard


def diverged_at(callbacks: list) -> dict[str, Any] | None:
    """Where the run's DivergenceGuard stopped it, or None."""
    for cb in callbacks:
        if type(cb).__name__ == "DivergenceGuard" and cb.diverged is not None:
            return cb.diverged
    return None


def make_callbacks(cfg: TrainConfig, run_dir: Path, resuming: bool, backup: str = BACKUP) -> list:
    """Divergence guard, backup/restore, best-model checkpoint, CSV log, TensorBoard, early stopping,
    schedule (in that order: the guard sees every batch first, the log sees the learning rate)."""
    import keras

    checkpoint = _atomic_checkpoint_cls()(run_dir / "best.keras", monitor="val_accuracy")
    if resuming and (run_dir / "best.keras").exists() and (run_dir / "history.csv").exists():
        from keras_digits.report import read_history

        seen = [v for v in read_history(run_dir / "history.csv").get("val_accuracy", []) if np.isfinite(v)]
        checkpoint.best = max(seen, default=-np.inf)  # a resumed run keeps its best model unless beaten
    cbs = [
        _divergence_guard_cls()(),
        _epoch_log_cls()(),  # before CSVLogger and TensorBoard, so they see its columns
        keras.callbacks.BackupAndRestore(str(run_dir / backup), delete_checkpoint=True),
        checkpoint,
        keras.callbacks.CSVLogger(str(run_dir / "history.csv"), append=resuming),
        keras.callbacks.TensorBoard(log_dir=str(run_dir / "logs"), histogram_freq=0, write_graph=False),
    ]
    if cfg.early_stopping and cfg.patience > 0:
        cbs.append(keras.callbacks.EarlyStopping(monitor="val_accuracy", mode="max", patience=cfg.patience,
                                                 restore_best_weights=True, verbose=cfg.verbose))
    return cbs + schedule_callbacks(cfg)
