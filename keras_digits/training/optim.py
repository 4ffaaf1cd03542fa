"""Optimizers, per-step learning-rate schedules and the loss of a run (training.setup.compile_model).

`--schedule onecycle` is a per-step schedule inside the optimizer (`OneCycle`): a linear warm-up from
lr/10 over the first 20 % of the run's steps, then a cosine decay to lr/1000, the one-cycle policy of
Smith & Topin (2017) in the form fastai and PyTorch's OneCycleLR use. The epoch-wise schedules (step,
cosine, plateau) are callbacks (keras_digits.training.callbacks.schedule_callbacks). `--label-smoothing e`
trains on (1 - e) x the one-hot label + e / classes (Szegedy et al. 2016) with integer labels
(`SparseSmoothedCrossentropy`; Keras' sparse cross-entropy has no smoothing)."""

from __future__ import annotations

import math

import keras

from keras_digits.config import TrainConfig
from keras_digits.errors import KerasDigitsError


@keras.saving.register_keras_serializable(package="keras_digits")
class OneCycle(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from peak x start_factor to `peak` over warmup x total_steps, then cosine to peak x end_factor."""

    def __init__(
        self, peak: float, total_steps: int, warmup: float = 0.2, start_factor: float = 0.1, end_factor: float = 1e-3
    ):
        self.peak, self.total_steps, self.warmup = float(peak), int(total_steps), float(warmup)
        self.start_factor, self.end_factor = float(start_factor), float(end_factor)

    def __call__(self, step):
        ops = keras.ops
        step = ops.cast(step, "float32")
        total = float(max(1, self.total_steps))
        warm = max(1.0, self.warmup * total)
        rising = self.peak * (self.start_factor + (1.0 - self.start_factor) * step / warm)
        t = ops.clip((step - warm) / max(1.0, total - warm), 0.0, 1.0)
        falling = self.peak * (self.end_factor + (1.0 - self.end_factor) * 0.5 * (1.0 + ops.cos(math.pi * t)))
        return ops.where(step < warm, rising, falling)

    def get_config(self):
        return {
            "peak": self.peak,
            "total_steps": self.total_steps,
            "warmup": self.warmup,
            "start_factor": self.start_factor,
            "end_factor": self.end_factor,
        }


@keras.saving.register_keras_serializable(package="keras_digits")
class SparseSmoothedCrossentropy(keras.losses.Loss):
    """Cross-entropy of probabilities against integer labels smoothed by `label_smoothing`."""

    def __init__(self, label_smoothing: float = 0.0, name: str = "sparse_smoothed_crossentropy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.label_smoothing = float(label_smoothing)

    def call(self, y_true, y_pred):
        ops = keras.ops
        classes = ops.shape(y_pred)[-1]
        onehot = ops.one_hot(ops.cast(ops.reshape(y_true, (-1,)), "int32"), classes, dtype=y_pred.dtype)
        e = self.label_smoothing
        target = onehot * (1.0 - e) + e / ops.cast(classes, y_pred.dtype)
        return keras.losses.categorical_crossentropy(target, y_pred)

    def get_config(self):
        return {**super().get_config(), "label_smoothing": self.label_smoothing}


def make_optimizer(
    cfg: TrainConfig, lr: float | None = None, steps_per_epoch: int | None = None, epochs: int | None = None
):
    """The Keras optimizer named by the config; with --schedule onecycle its learning rate is a
    `OneCycle` over `epochs` (default cfg.epochs) x `steps_per_epoch` steps."""
    lr = cfg.lr if lr is None else lr
    if cfg.schedule == "onecycle":
        if not steps_per_epoch:
            raise KerasDigitsError("--schedule onecycle needs the number of steps per epoch")
        lr = OneCycle(lr, int(steps_per_epoch) * int(epochs or cfg.epochs))
    wd = cfg.weight_decay or None
    if cfg.optimizer == "adam":
        return keras.optimizers.Adam(lr, weight_decay=wd)
    if cfg.optimizer == "sgd":
        return keras.optimizers.SGD(lr, momentum=float(cfg.momentum), weight_decay=wd)
    if cfg.optimizer == "nadam":
        return keras.optimizers.Nadam(lr, weight_decay=wd)
    if cfg.optimizer == "adagrad":
        return keras.optimizers.Adagrad(lr, weight_decay=wd)
    if cfg.optimizer == "adamw":
        return keras.optimizers.AdamW(lr, weight_decay=cfg.weight_decay or 1e-4)
    if cfg.optimizer == "rmsprop":
        return keras.optimizers.RMSprop(lr, momentum=0.0, weight_decay=wd)
    raise KerasDigitsError(f"unknown optimizer {cfg.optimizer!r}")


def make_loss(cfg: TrainConfig):
    """Sparse categorical cross-entropy, smoothed under --label-smoothing."""
    if cfg.label_smoothing:
        return SparseSmoothedCrossentropy(cfg.label_smoothing)
    return "sparse_categorical_crossentropy"
