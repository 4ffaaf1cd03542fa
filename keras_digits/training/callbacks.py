"""The Keras callbacks of a training run: learning-rate schedules, the atomic best-model checkpoint, the
learning-rate log, the divergence guard, the per-epoch random state, resumable early stopping, precise
BatchNorm statistics before each validation, the collapse detector, and `make_callbacks`, which puts
them together. It imports Keras: commands import it only when they train."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import keras
import numpy as np

from keras_digits.config import TrainConfig
from keras_digits.errors import KerasDigitsError
from keras_digits.evaluation.auc import macro_auc
from keras_digits.reporting.result_files import COLLAPSE_FILE, read_collapse
from keras_digits.training.collapse import ADVICE, chance_level, collapse_signs, mode_check, near_chance_below
from keras_digits.training.precise_bn import Recalibrator, batchnorm_layers
from keras_digits.utils.finite import model_is_finite
from keras_digits.utils.io import atomic_path, write_json, write_text

BACKUP, FINE_TUNE_BACKUP = "backup", "backup-fine-tune"  # BackupAndRestore folders of the two phases
SEED_STRIDE = 2**20  # epoch e's Dropout (SeedGenerator) draws start at counter e x SEED_STRIDE


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
    if cfg.schedule == "plateau":
        return [
            keras.callbacks.ReduceLROnPlateau(
                monitor="val_loss",
                factor=0.1,
                patience=max(1, cfg.patience // 2),
                min_lr=cfg.lr * 1e-3,
                verbose=cfg.verbose,
            )
        ]
    if cfg.schedule in ("step", "cosine"):
        return [keras.callbacks.LearningRateScheduler(lambda e, lr: schedule_lr(cfg, e), verbose=0)]
    return []


# ---------------------------------------------------------------------------- callbacks
def _finite(value: Any) -> bool:
    try:
        return bool(np.isfinite(float(value)))
    except (TypeError, ValueError):
        return False


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


class EpochRandomState(keras.callbacks.Callback):
    """Make epoch e's randomness a function of (seed, e), so that a run resumed in a new process
    draws what the uninterrupted run would have drawn.

    BackupAndRestore restores weights (BatchNorm statistics included), optimizer state and the
    epoch number, but not the random state: a tf.data shuffle's reshuffling and every Keras
    SeedGenerator (Dropout masks) restart with the process, so the first resumed epoch replayed
    epoch 0's batches with epoch 0's masks, which the weights had already fitted (training
    accuracy ~1, then a worse epoch). At the start of each epoch this sets the pipelines'
    epoch variable (`Pipelines.epoch`: order, resampling, augmentation) and restarts every
    SeedGenerator of the model at counter epoch x SEED_STRIDE (its seed part is fixed at build)."""

    def __init__(self, epoch_var=None):
        super().__init__()
        self.epoch_var = epoch_var

    def on_epoch_begin(self, epoch, logs=None):
        if self.epoch_var is not None:
            self.epoch_var.assign(epoch)
        for v in self.model.variables:
            if v.name == "seed_generator_state":  # Keras SeedGenerator: [seed, counter]
                seed = int(keras.ops.convert_to_numpy(v)[0])
                v.assign(np.array([seed, epoch * SEED_STRIDE], dtype=v.dtype))


class ResumableEarlyStopping(keras.callbacks.EarlyStopping):
    """EarlyStopping whose best value, best epoch and patience count survive a restart: replayed
    from this fit's history.csv rows (epoch >= `first_epoch`), the best weights from best.keras."""

    def __init__(self, run_dir: Path, first_epoch: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.run_dir, self.first_epoch = Path(run_dir), first_epoch

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        path = self.run_dir / "history.csv"  # CSVLogger, earlier in the list, has truncated it if fresh
        if not path.exists():
            return
        from keras_digits.reporting.history import read_history

        history = read_history(path)
        rows = [
            (int(e), v)
            for e, v in zip(history.get("epoch", []), history.get(self.monitor, []))
            if e >= self.first_epoch and np.isfinite(v)
        ]
        if not rows:
            return
        if self.monitor_op is None:
            self._set_monitor_op()
        for epoch, value in rows:  # EarlyStopping.on_epoch_end's bookkeeping
            self.wait += 1
            if self._is_improvement(value, self.best):
                self.best, self.best_epoch = value, epoch
                if self.baseline is None or self._is_improvement(value, self.baseline):
                    self.wait = 0
        best = self.run_dir / "best.keras"
        if self.restore_best_weights and best.exists():
            self.best_weights = keras.saving.load_model(best, compile=False).get_weights()


class TrainingEnded(keras.callbacks.Callback):
    """Write `path` (keras_digits.training.run.TRAINED) when the last fit of a run ends without diverging. It sits
    before BackupAndRestore, whose on_train_end deletes the backup: with the marker written only
    after fit returned, a kill in between left neither, and the rerun trained from scratch."""

    def __init__(self, path: Path, guard):
        super().__init__()
        self.path, self.guard = Path(path), guard

    def on_train_end(self, logs=None):
        if self.guard.diverged is None:
            write_json(self.path, {"ended": time.strftime("%Y-%m-%d %H:%M:%S")})


class ValAUC(keras.callbacks.Callback):
    """Put the validation split's macro one-vs-rest ROC AUC into each epoch's logs as `val_auc`, for
    the checkpoint and early stopping of `--select-on auc` (and history.csv)."""

    def __init__(self, dataset, labels):
        super().__init__()
        self.dataset, self.labels = dataset, np.asarray(labels)

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        probs = self.model.predict(self.dataset, verbose=0)
        auc = macro_auc(self.labels, probs)
        logs["val_auc"] = float("nan") if auc is None else auc


class PreciseBatchNorm(keras.callbacks.Callback):
    """Recompute the BatchNorm population statistics for the epoch's final weights before its validation
    (keras_digits.training.precise_bn); the seconds it took go into the epoch's logs as `precise_bn_seconds`."""

    def __init__(self, recalibrate: Recalibrator):
        super().__init__()
        self.recalibrate, self.seconds = recalibrate, 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self.seconds = 0.0

    def on_test_begin(self, logs=None):  # fit calls it after the epoch's training, before validation
        start = time.perf_counter()
        self.recalibrate()
        self.seconds += time.perf_counter() - start

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["precise_bn_seconds"] = self.seconds


class CollapseWatch(keras.callbacks.Callback):
    """The collapse detector (keras_digits.training.collapse): after each epoch's validation, say when the
    model is near chance in inference mode while it fits its training batches, and record it in the
    run's collapse.json for the report."""

    def __init__(self, run_dir: Path, images: np.ndarray, labels: np.ndarray, all_labels, verbose: int = 1):
        super().__init__()
        self.path, self.images, self.labels = Path(run_dir) / COLLAPSE_FILE, images, np.asarray(labels)
        self.chance, self.verbose = chance_level(all_labels), verbose
        self.record: dict[str, Any] = {
            "chance": self.chance,
            "near_chance_below": near_chance_below(self.chance),
            "advice": ADVICE,
            "epochs": [],
        }
        if self.path.is_file():  # a resumed run keeps what the earlier part saw
            self.record["epochs"] = (read_collapse(self.path.parent) or {}).get("epochs", [])

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        modes = None
        if len(self.images):
            modes = mode_check(self.model, self.images, self.labels, both=bool(batchnorm_layers(self.model, False)))
        signs = collapse_signs(logs.get("accuracy"), logs.get("val_accuracy"), self.chance, modes)
        before = len(self.record["epochs"])  # a resumed run may replay an epoch the record has
        self.record["epochs"] = [e for e in self.record["epochs"] if e.get("epoch") != epoch + 1]
        if not signs:
            if len(self.record["epochs"]) != before:
                write_json(self.path, self.record)
            return
        self.record["epochs"].append(
            {
                "epoch": epoch + 1,
                "signs": signs,
                "accuracy": logs.get("accuracy"),
                "val_accuracy": logs.get("val_accuracy"),
                **({"modes": modes} if modes else {}),
            }
        )
        write_json(self.path, self.record)
        if self.verbose:
            print(f"\nwarning: epoch {epoch + 1} looks collapsed: {'; '.join(signs)}: {ADVICE}", flush=True)


class HistoryLog(keras.callbacks.CSVLogger):
    """CSVLogger that, appending to a history.csv, keeps that file's columns: a run resumed by a version
    that logs another column (precise_bn_seconds) writes its rows under the existing header, with any
    column it no longer has as NA, instead of shifting every value after the new one."""

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        path = Path(self.filename)
        if self.append and path.is_file():
            with path.open() as f:
                header = f.readline().rstrip("\r\n")
            if header.startswith("epoch" + self.sep):
                self.keys = header.split(self.sep)[1:]


class Backup(keras.callbacks.BackupAndRestore):
    """BackupAndRestore that restores first but saves last: its save runs from `saver` (the end of the
    callback list), after history.csv has the epoch's row, so a kill between the two never leaves a
    backup ahead of the history. On restore, history rows of epochs the backup had not finished (a
    kill after the row, before the save) are dropped: they are trained again."""

    def on_train_begin(self, logs=None):
        self.model._initial_epoch = None  # Keras never clears it: a second fit would start where the first resumed
        super().on_train_begin(logs)
        path = Path(self.history_path) if self.history_path else None
        meta = Path(self._training_metadata_path)
        if path is None or not path.is_file() or not meta.is_file():
            return  # nothing restored by this callback

        try:
            done = int(json.loads(meta.read_text())["epoch"])
        except (OSError, ValueError, KeyError, TypeError, RecursionError):
            raise KerasDigitsError(
                f"the training backup {meta.parent} is damaged; rerun with --overwrite to start the run over"
            ) from None
        lines = path.read_text().splitlines()
        keep = lines[:1] + [
            row for row in lines[1:] if row.split(",", 1)[0].isdigit() and int(row.split(",", 1)[0]) < done
        ]
        if keep != lines:
            write_text(path, "\n".join(keep) + "\n")

    def on_epoch_end(self, epoch, logs=None):
        pass  # see saver()

    def saver(self) -> BackupSaver:
        """The callback that saves this backup; it goes last in the list."""
        return BackupSaver(self)


class BackupSaver(keras.callbacks.Callback):
    """Saves a `Backup` at the end of each epoch, after every other callback has run."""

    def __init__(self, backup: Backup):
        super().__init__()
        self.backup = backup

    def on_epoch_end(self, epoch, logs=None):
        self.backup._current_epoch = epoch + 1
        self.backup._last_batch_seen = 0
        self.backup._save_model()


def diverged_at(callbacks: list) -> dict[str, Any] | None:
    """Where the run's DivergenceGuard stopped it, or None."""
    for cb in callbacks:
        if isinstance(cb, DivergenceGuard) and cb.diverged is not None:
            return cb.diverged
    return None


def make_callbacks(
    cfg: TrainConfig,
    run_dir: Path,
    resuming: bool,
    backup: str = BACKUP,
    *,
    epoch_var=None,
    first_epoch: int = 0,
    ended: Path | None = None,
    val=None,
    auc_in_logs: bool = False,
    precise_bn: Recalibrator | None = None,
    watch: tuple | None = None,
) -> list:
    """Divergence guard, per-epoch random state, backup/restore, best-model checkpoint, CSV log,
    TensorBoard, early stopping, schedule (in that order: the guard sees every batch first, the log
    sees the learning rate). `epoch_var`: the training pipelines' `Pipelines.epoch`; `first_epoch`:
    this fit's first epoch (phase two's), where early stopping starts counting; `ended`: the marker
    to write when this (the run's last) fit ends; `val`: (validation dataset, its labels), needed by
    --select-on auc, whose ValAUC callback puts val_auc in the logs before the checkpoint reads them
    (`auc_in_logs`: the training loop puts it there itself, as keras_digits.training.distributed_fit does);
    `precise_bn`: the recalibration to run before each validation (None: off); `watch`: (images, labels,
    all validation labels) for the collapse detector (None: no detector)."""
    import keras

    monitor = f"val_{cfg.select_on}"
    if cfg.select_on == "auc" and val is None and not auc_in_logs:
        raise ValueError("--select-on auc needs the validation data: make_callbacks(..., val=(dataset, labels))")
    checkpoint = AtomicCheckpoint(run_dir / "best.keras", monitor=monitor)
    if resuming and (run_dir / "best.keras").exists() and (run_dir / "history.csv").exists():
        from keras_digits.reporting.history import read_history

        seen = [v for v in read_history(run_dir / "history.csv").get(monitor, []) if np.isfinite(v)]
        checkpoint.best = max(seen, default=-np.inf)  # a resumed run keeps its best model unless beaten
    guard = DivergenceGuard()
    backup_cb = Backup(str(run_dir / backup), delete_checkpoint=True)
    backup_cb.history_path = run_dir / "history.csv" if resuming else None
    cbs = [
        guard,
        EpochRandomState(epoch_var),
        *([PreciseBatchNorm(precise_bn)] if precise_bn is not None else []),  # its seconds go in the epoch's logs
        *([CollapseWatch(run_dir, *watch, verbose=cfg.verbose)] if watch is not None else []),
        *(
            [ValAUC(*val)] if cfg.select_on == "auc" and not auc_in_logs else []
        ),  # timed in the epoch, seen by the checkpoint
        EpochLog(),  # before CSVLogger and TensorBoard, so they see its columns
        *([TrainingEnded(ended, guard)] if ended is not None else []),  # before BackupAndRestore
        backup_cb,
        checkpoint,
        HistoryLog(str(run_dir / "history.csv"), append=resuming),
        keras.callbacks.TensorBoard(log_dir=str(run_dir / "logs"), histogram_freq=0, write_graph=False),
    ]
    if cfg.early_stopping and cfg.patience > 0:
        cbs.append(
            ResumableEarlyStopping(
                run_dir,
                first_epoch,
                monitor=monitor,
                mode="max",
                patience=cfg.patience,
                restore_best_weights=True,
                verbose=cfg.verbose,
            )
        )
    return cbs + schedule_callbacks(cfg) + [backup_cb.saver()]  # the backup is saved after everything else
