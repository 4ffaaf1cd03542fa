"""Precise BatchNorm: population statistics recomputed for the current weights before each validation.

BatchNormalization normalises with batch statistics while training and with its moving averages
(`moving_mean`, `moving_variance`) in inference mode: validation, the kept checkpoint, the test score,
predict and export all use those averages. They follow the weights with momentum m per step, so they
carry the weights of about 1 / (1 - m) steps ago: 100 steps at keras.applications' m = 0.99. On a small
dataset (the digits' 41 steps per epoch) that is two or three epochs of a fast-moving network, and the
initial values (mean 0, variance 1) still weigh 0.99^41 = 66 % after the first epoch. Through the 40
BatchNorm layers of Xception the errors compound: training accuracy 0.96, inference-mode accuracy at
chance (issue 27).

The fix is the "precise BN" of Wu & Johnson, *Rethinking "Batch" in BatchNorm* (2021), which fvcore
and pycls ship for PyTorch: with the weights fixed, run N training batches through the model in
training mode and set each layer's statistics to the plain average of the N batch means and batch
variances. Here that runs from a callback's `on_test_begin`, which Keras' fit calls after an epoch's
training and before its validation (the project's multi-worker loop calls it too, then averages the
statistics over workers), so validation, the checkpoint and early stopping's restored weights all
carry statistics that fit their weights. Frozen BatchNorm layers (a frozen pretrained base) run in
inference mode and are left alone.

The N batches are a fixed, seeded sample of the training split, without augmentation (the model is
scored on unaugmented images) and batched as training is (`--batch-size`, per replica). Keras'
BatchNormalization reads its momentum when a call is traced: the forward function is traced and run
with every momentum set to 0 (a moving statistic then equals the batch's), the batch statistics are
read back and averaged in float64, and the momenta are restored. No weight and no optimizer state
changes.

`--precise-bn auto` (the default) turns it on where it matters: a model with trainable BatchNorm
layers whose moving averages would still hold more than 5 % of their value from before the epoch
(momentum^steps_per_epoch > 0.05), with min(steps per epoch, ceil(640 / batch size)) batches.
`--precise-bn 0` turns it off; `--precise-bn N` uses N batches.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

AUTO_IMAGES = 640  # images the automatic setting averages over (20 batches of 32)
STALE_WEIGHT = 0.05  # auto: on when the moving averages keep more than this from before the epoch


def batchnorm_layers(model, trainable_only: bool = True) -> list:
    """The model's BatchNormalization layers (nested models included), in order; by default only those that
    update their statistics in training mode (a frozen layer runs in inference mode)."""
    import keras

    found = [
        layer
        for layer in model._flatten_layers(include_self=False)
        if isinstance(layer, keras.layers.BatchNormalization)
    ]
    return [layer for layer in found if layer.trainable] if trainable_only else found


@contextlib.contextmanager
def momenta_set_to(layers: list, value: float) -> Iterator[None]:
    """Every BatchNorm layer of `layers` has momentum `value` inside (Keras reads it when a call runs or is
    traced): 0 makes a training-mode call store the batch's statistics, 1 leaves the stored ones as they are."""
    kept = [layer.momentum for layer in layers]
    try:
        for layer in layers:
            layer.momentum = value
        yield
    finally:
        for layer, m in zip(layers, kept):
            layer.momentum = m


@dataclass(frozen=True)
class PreciseBNPlan:
    """What --precise-bn resolved to for one model and dataset: `batches` (0 = off) and why."""

    batches: int
    reason: str


def plan_precise_bn(setting: int | None, model, steps_per_epoch: int | None, batch_size: int) -> PreciseBNPlan:
    """Resolve --precise-bn (None = auto, 0 = off, N = batches) for `model` trained `steps_per_epoch` steps
    per epoch (None: unknown, e.g. a resampled pipeline of unknown length)."""
    layers = batchnorm_layers(model)
    if setting == 0:
        return PreciseBNPlan(0, "off (--precise-bn 0)")
    if not layers:
        return PreciseBNPlan(0, "off: the model has no trainable BatchNormalization layer")
    if setting is not None:
        return PreciseBNPlan(int(setting), f"{setting} batches (--precise-bn)")
    momentum = max(float(layer.momentum) for layer in layers)
    steps = steps_per_epoch or 0
    stale = momentum**steps if steps else 1.0
    if steps and stale <= STALE_WEIGHT:
        return PreciseBNPlan(
            0,
            f"off (auto): BatchNorm momentum {momentum:g} over {steps} steps per epoch keeps {stale:.1%} "
            "of the statistics from before the epoch",
        )
    batches = math.ceil(AUTO_IMAGES / batch_size)
    if not steps:
        return PreciseBNPlan(batches, f"{batches} batches (auto): the epoch's length is unknown")
    batches = max(1, min(batches, steps))
    return PreciseBNPlan(
        batches,
        f"{batches} batches (auto): BatchNorm momentum {momentum:g} over {steps} steps per epoch would keep "
        f"{stale:.0%} of the statistics from before the epoch",
    )


class Recalibrator:
    """Recompute the trainable BatchNorm layers' population statistics of `model` over `images` (uint8
    NHWC, as the training pipeline yields them; anything that slices to arrays) in batches of `batch_size`."""

    def __init__(self, model, images, batch_size: int):
        self.model, self.images, self.batch_size = model, images, int(batch_size)
        self._fn = None
        self._key: tuple = ()

    def _forward(self, layers: list):
        import tensorflow as tf

        key = tuple(id(layer) for layer in layers)
        if self._fn is None or key != self._key:
            model = self.model

            @tf.function(reduce_retracing=True)
            def forward(x):
                model(x, training=True)
                means = [tf.convert_to_tensor(layer.moving_mean) for layer in layers]
                variances = [tf.convert_to_tensor(layer.moving_variance) for layer in layers]
                return means, variances

            self._fn, self._key = forward, key
        return self._fn

    def __call__(self) -> int:
        """Recalibrate; returns the number of layers whose statistics were set (0: nothing to do)."""
        layers = batchnorm_layers(self.model)
        if not layers or len(self.images) == 0:
            return 0
        forward = self._forward(layers)
        sums_m = [np.zeros(tuple(layer.moving_mean.shape), np.float64) for layer in layers]
        sums_v = [np.zeros_like(s) for s in sums_m]
        count = 0
        with momenta_set_to(layers, 0.0):  # read when `forward` is traced: the moving statistic becomes the batch's
            for start in range(0, len(self.images), self.batch_size):
                batch = self.images[start : start + self.batch_size]
                if len(batch) < 2:
                    break  # a one-image batch has no variance
                means, variances = forward(batch)
                for i in range(len(layers)):
                    sums_m[i] += np.asarray(means[i], np.float64)
                    sums_v[i] += np.asarray(variances[i], np.float64)
                count += 1
        if count == 0:
            return 0
        for layer, sm, sv in zip(layers, sums_m, sums_v):
            layer.moving_mean.assign((sm / count).astype(np.float32))
            layer.moving_variance.assign((sv / count).astype(np.float32))
        return len(layers)


def make_recalibrator(plan: PreciseBNPlan, model, pipes, batch_size: int) -> Recalibrator | None:
    """The recalibration `plan` asks for, over `pipes`' calibration sample (keras_digits.data.datasets.Pipelines),
    or None when the plan is off."""
    if not plan.batches:
        return None
    return Recalibrator(model, pipes.calibration_images(plan.batches * batch_size), batch_size)
