"""Who this process is in a training run: alone, one of several mirrored replicas, or one worker of a
multi-worker cluster. `RunRole` owns the strategy and, under `--strategy multiworker`, the TF_CONFIG task,
and answers every question a run asks about it, so the run itself never branches on the strategy:
where it trains, how many steps make an epoch, how it starts, whose word decides, how it fits, and who
scores and publishes."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from keras_digits.config import TrainConfig
from keras_digits.errors import KerasDigitsError


@dataclass
class RunRole:
    """The strategy of a run and, under multi-worker training, this worker's task (None otherwise)."""

    strategy: Any
    task: Any = None  # keras_digits.runtime.tfconfig.Task

    @classmethod
    def for_config(cls, cfg: TrainConfig) -> RunRole:
        """The role --strategy gives this process (multi-worker: once every worker answers)."""
        from keras_digits.runtime.strategy import get_strategy, multiworker_strategy

        if cfg.strategy == "multiworker":
            strategy, task = multiworker_strategy(cfg.verbose, cfg.worker_wait)
            return cls(strategy, task)
        return cls(get_strategy(cfg.strategy, cfg.verbose, cfg.worker_wait))

    @property
    def multi_worker(self) -> bool:
        return self.task is not None

    @property
    def replicas(self) -> int:
        from keras_digits.runtime.strategy import replicas

        return replicas(self.strategy)

    def check(self, cfg: TrainConfig) -> None:
        """Refuse what this role cannot train: under multi-worker, float16 (its loss scaling would decide per
        worker) and the two phases of --fine-tune-at."""
        if not self.multi_worker:
            return
        if cfg.precision == "float16":
            raise KerasDigitsError("--precision float16 is not supported with --strategy multiworker: use bfloat16")
        if cfg.fine_tune_at is not None:
            raise KerasDigitsError(
                "--fine-tune-at is not supported with --strategy multiworker; train the two phases "
                "with --strategy default or mirrored"
            )

    def training_dir(self, cfg: TrainConfig, run_dir: Path, overwrite: bool) -> Path:
        """Where this process trains: the run directory, or a non-chief worker's private sibling."""
        if not self.multi_worker:
            return run_dir
        from keras_digits.training.rundir import multiworker_dir

        return multiworker_dir(cfg, run_dir, self.task, overwrite)

    def steps_per_epoch(self, pipes, batch_size: int) -> int:
        """Optimizer steps in one epoch (a per-step schedule's unit): multi-worker runs take full global batches."""
        if self.multi_worker:
            return pipes.n_train // (batch_size * self.replicas)
        return pipes.steps_per_epoch

    def start(self, open_run):
        """`open_run()` (taking and preparing the run directory); under multi-worker every worker learns if one
        of them failed there, instead of waiting for it."""
        if not self.multi_worker:
            return open_run()
        from keras_digits.training.distributed_fit import agreed_start

        return agreed_start(self.strategy, open_run)

    def chief_decides(self, value: bool) -> bool:
        """This process's `value`, or under multi-worker the chief's (a worker's own folder may be older)."""
        if not self.multi_worker:
            return value
        from keras_digits.training.distributed_fit import chief_values

        return bool(chief_values(self.strategy, self.task.is_chief, [float(value)])[0])

    def fit(self, model, cfg: TrainConfig, pipes, callbacks: list, epochs: int, initial_epoch: int = 0) -> None:
        """Train with `callbacks`: Keras' fit, or under multi-worker the project's loop (Keras 3's fit fails
        under MultiWorkerMirroredStrategy), which drives the same callbacks."""
        if not self.multi_worker:
            model.fit(
                pipes.train,
                initial_epoch=initial_epoch,
                epochs=epochs,
                callbacks=callbacks,
                verbose=cfg.verbose,
                **pipes.fit_kwargs(),
            )
            return
        from keras_digits.training.distributed_fit import distributed_fit

        distributed_fit(
            model,
            self.strategy,
            pipes,
            callbacks,
            epochs=epochs,
            n_train=pipes.n_train,
            initial_epoch=initial_epoch,
            global_batch=cfg.batch_size * self.replicas,
            is_chief=self.task.is_chief,
            select_on=cfg.select_on,
            verbose=cfg.verbose,
        )

    @property
    def logs_auc(self) -> bool:
        """Whether the training loop itself puts val_auc in the logs (the multi-worker loop does)."""
        return self.multi_worker

    def training_ended(self, model, training_dir: Path) -> bool:
        """After training: whether this process goes on to score and publish. A non-chief worker prints its
        weights digest, drops its private folder and waits for the chief to finish scoring."""
        if not self.multi_worker:
            return True
        from keras_digits.training.distributed_fit import all_ok, weights_digest

        print(f"{self.task.name}: training ended; weights digest {weights_digest(model)}", flush=True)
        if self.task.is_chief:
            return True
        shutil.rmtree(training_dir, ignore_errors=True)
        all_ok(self.strategy, True)  # wait for the chief to finish scoring
        return False

    def published(self) -> None:
        """The chief has published the run: under multi-worker the other workers may exit now."""
        if self.multi_worker:
            from keras_digits.training.distributed_fit import all_ok

            all_ok(self.strategy, True)
