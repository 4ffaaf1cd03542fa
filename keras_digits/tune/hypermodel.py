"""The KerasTuner hypermodel: `build(hp)` builds and compiles the registry's model with the trial's
options, `fit(hp, model)` trains the trial's TrainConfig through the same data pipelines and schedule
callbacks as `keras_digits.train`, with early stopping on the objective and class weights."""

from __future__ import annotations

import time

import keras_tuner as kt

from keras_digits.config import TrainConfig
from keras_digits.errors import KerasDigitsError
from keras_digits.tune.space import search_space, trial_config


def rss_mb() -> float:
    """This process's resident memory in MiB."""
    import psutil

    return psutil.Process().memory_info().rss / 2**20


class DigitsHyperModel(kt.HyperModel):
    """build(hp): the registry's model with the space's kwargs, compiled with the trial's optimizer and lr.
    fit(hp, model): the trial's TrainConfig through make_datasets, early stopping on the objective."""

    def __init__(self, base: TrainConfig, objective: str = "val_accuracy"):
        super().__init__(name=f"{base.arch}_tuner", tunable=True)
        self.base = base
        self.space = search_space(base.arch)
        self.objective = kt.Objective(objective, "min" if objective.endswith("loss") else "max")
        self._bundle = None
        self.start_trial()

    # ---- data, loaded once per process
    @property
    def bundle(self):
        if self._bundle is None:
            from keras_digits.data import load_for

            b = self.base
            self._bundle = load_for(b)
            if self._bundle.val is None:
                raise KerasDigitsError(f"{b.dataset} has no validation split; use --val-split above 0")
        return self._bundle

    # ---- per-trial bookkeeping (the tuner resets it)
    def start_trial(self) -> None:
        self.executions = 0
        self.epochs = 0
        self.fit_seconds = 0.0
        self.best_values: list[float] = []

    def config(self, hp, epochs: int | None = None) -> TrainConfig:
        return trial_config(self.base, hp, self.space, epochs)

    def declare_hyperparameters(self, hp) -> None:
        self.config(hp)

    def build(self, hp):
        from keras_digits.training.setup import build_for, compile_model, setup_runtime

        cfg = self.config(hp)
        setup_runtime(cfg.replace(seed=cfg.seed + self.executions))  # executions differ in their seed
        self.executions += 1
        from keras_digits.data.datasets import normalization_stats

        bundle = self.bundle
        stats = normalization_stats(cfg.normalize, bundle.train[0])  # --normalize dataset: training split only
        model = build_for(cfg, bundle.input_shape, bundle.num_classes, stats)
        import math

        steps = math.ceil(len(bundle.train[1]) / cfg.batch_size)  # --schedule onecycle's step count,
        epochs = int(hp.values.get("tuner/epochs", cfg.epochs))  # over the epochs this trial trains (Hyperband)
        compile_model(
            model, cfg, steps_per_epoch=steps, epochs=epochs
        )  # optimizer and lr are chosen here, with the model's options
        return model

    def fit(self, hp, model, *args, callbacks=None, epochs=None, **kwargs):
        import keras
        import numpy as np

        from keras_digits.data.datasets import make_datasets
        from keras_digits.training.callbacks import PreciseBatchNorm, schedule_callbacks
        from keras_digits.training.precise_bn import make_recalibrator, plan_precise_bn

        cfg = self.config(hp, epochs=epochs)  # Hyperband passes its own epochs and initial_epoch
        pipes = make_datasets(cfg, self.bundle)
        cbs = list(callbacks or []) + schedule_callbacks(cfg.replace(verbose=0))
        plan = plan_precise_bn(cfg.precise_bn, model, pipes.steps_per_epoch, cfg.batch_size)
        if recalibrate := make_recalibrator(plan, model, pipes, cfg.batch_size):  # as in train: the trial's
            cbs.append(PreciseBatchNorm(recalibrate))  # validation sees statistics that fit its weights
        if cfg.early_stopping and cfg.patience > 0:
            cbs.append(
                keras.callbacks.EarlyStopping(
                    monitor=self.objective.name, mode=self.objective.direction, patience=cfg.patience
                )
            )
        for key in ("validation_data", "class_weight", "x", "y", "batch_size"):
            kwargs.pop(key, None)
        start = time.perf_counter()
        history = model.fit(pipes.train, epochs=cfg.epochs, callbacks=cbs, **pipes.fit_kwargs(), **kwargs)
        self.fit_seconds += time.perf_counter() - start
        self.epochs += len(history.epoch)
        values = [v for v in history.history.get(self.objective.name, []) if np.isfinite(v)]
        if values:
            self.best_values.append(float(max(values) if self.objective.direction == "max" else min(values)))
        return history

    def objective_value(self) -> float | None:
        """Mean over executions of each execution's best epoch (as KerasTuner scores a trial)."""
        return sum(self.best_values) / len(self.best_values) if self.best_values else None
