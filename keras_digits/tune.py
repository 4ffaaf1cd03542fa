"""KerasTuner search over an architecture's declared search space plus the fit-time settings.

Usage
-----
    python -m keras_digits.tune --arch simple_cnn --dataset mnist --data-dir /work/shared/data \\
        --tuner bayesian --max-trials 30 --max-epochs 10 [--directory tuning] [--project NAME] \\
        [--objective val_accuracy] [--executions-per-trial 1] [--max-train-samples N] [--seed 42] \\
        [--fixed optimizer=adam --fixed model/batch_norm=true] [--overwrite] [--retrain-best [--run-dir DIR]]

What is searched
    * the architecture's options, through the search space the arch declares with
      `@register_search_space(name)` next to its builder (hp -> builder kwargs; the tuner holds no copy
      of any architecture). Those hyperparameters are named `model/<name>`. An arch that declares no
      space gets a generic one: `width` (default and half), `dropout`, `batch_norm`, when its builder
      takes them.
    * the fit-time settings (`fit_space`): batch_size, optimizer, lr, schedule, augment, balance.
      Each trial is a TrainConfig (base options from the command line + these values) trained through
      the same `make_datasets` / `compile_model` / `schedule_callbacks` as `keras_digits.train`, with
      early stopping on the objective and the config's class weights.
    * `--fixed NAME=VALUE` pins any of them (JSON values: `--fixed lr=0.001 --fixed model/batch_norm=false`).

Outputs (in DIRECTORY/PROJECT, default tuning/<dataset>-<arch>-<tuner>)
    trials.md, trials.csv   one row per trial: id, status, objective, epochs, seconds, worker, RSS,
                            hyperparameters (rewritten after every trial)
    best_config.json        the best trial as a TrainConfig: `python -m keras_digits.train --config
                            tuning/PROJECT/best_config.json` retrains it; `--retrain-best` does that
                            here, into runs/tuned-<PROJECT> (or --run-dir)
    best_trial.json         id, objective value and hyperparameters of the best trial
    tb/                     TensorBoard logs with the HParams dashboard (`tensorboard --logdir tb`)
    trial_<id>/run_info.json   per trial: worker id, host, pid, epochs, seconds, RSS, earlier attempts
    search.json             the options that define the search (checked when resuming)
    (--no-tensorboard skips tb/.)
    oracle.json, trial_<id>/trial.json, <tuner id>.json   KerasTuner's own state

Resuming
    Rerun the same command: KerasTuner reloads the oracle, finished trials are kept and an
    interrupted trial is run again; raising --max-trials continues the search. `--overwrite` starts
    over. Changing the arch, dataset, tuner, objective, data subset, seed or max epochs of an existing
    project is refused (use another --project).

Memory
    After every trial the model is dropped, `keras.backend.clear_session()` and `gc.collect()` run,
    and the process RSS is printed ("trial 3 done (tuner0): val_accuracy 0.9500, ..., RSS 812 MB").
    Keras/TensorFlow still keep roughly 25 MB per built-and-fitted model in a process (measured with
    plain Keras too, benchmarks/tuner_memory.py), so for long searches pass --max-rss-mb N: after a
    trial that leaves the process above N MB it re-executes itself (same flags, minus --overwrite)
    and resumes the search with fresh memory.

Distributed search (one chief, N workers, machines sharing a file system)
-------------------------------------------------------------------------
The chief only serves the oracle over gRPC (no training, no data loaded); each worker asks it for
trials, trains them and reports back. Every process runs the *same* command with the same
--directory on the shared file system; only three environment variables differ. Say the chief runs
on host 10.0.0.1, port 8000 open to the workers:

    # 1. the chief, first (it alone may use --overwrite, --retrain-best):
    KERASTUNER_TUNER_ID=chief KERASTUNER_ORACLE_IP=10.0.0.1 KERASTUNER_ORACLE_PORT=8000 \\
      python -m keras_digits.tune --arch simple_cnn --dataset mnist --data-dir /shared/data \\
        --tuner bayesian --max-trials 40 --max-epochs 10 --directory /shared/tuning --project mnist-cnn

    # 2. on each worker machine, one process per worker, ids tuner0, tuner1, ... (unique):
    KERASTUNER_TUNER_ID=tuner0 KERASTUNER_ORACLE_IP=10.0.0.1 KERASTUNER_ORACLE_PORT=8000 \\
      python -m keras_digits.tune --arch simple_cnn --dataset mnist --data-dir /shared/data \\
        --tuner bayesian --max-trials 40 --max-epochs 10 --directory /shared/tuning --project mnist-cnn
    KERASTUNER_TUNER_ID=tuner1 KERASTUNER_ORACLE_IP=10.0.0.1 KERASTUNER_ORACLE_PORT=8000 \\
      python -m keras_digits.tune ...same flags...

    # on one machine, for a try: KERASTUNER_ORACLE_IP=127.0.0.1 and any free port.

Workers may start before the chief (they wait for it) and may join at any time. The chief writes
trials.md/csv and best_config.json as trials finish and exits when the search is done and every
worker has been told to stop; workers exit then too. Pass --retrain-best to the chief to train the
best config afterwards (or run `python -m keras_digits.train --config .../best_config.json` anywhere).
Lost workers: each worker sends a heartbeat to the chief every --worker-timeout/4 seconds while it
trains; when a worker has been silent for --worker-timeout seconds (default 120; the chief's value
counts) the chief puts its trial back in the queue for another worker, and the search still
finishes. A killed worker restarted with the same KERASTUNER_TUNER_ID before that resumes its trial.
`--worker-timeout 0` keeps KerasTuner's own behaviour (wait for the worker forever). The gRPC channel
is unauthenticated and unencrypted: use it only on a trusted network.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import gc
import io
import json
import os
import socket
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

from keras_digits.cli import positive_int, quiet_tensorflow, run_cli

quiet_tensorflow()  # keras_tuner imports keras and TensorFlow

import keras_tuner as kt  # noqa: E402
from keras_tuner.src.distribute import utils as dist_utils  # noqa: E402
from keras_tuner.src.engine import trial as trial_module  # noqa: E402

from keras_digits.config import BALANCES, TrainConfig  # noqa: E402
from keras_digits.errors import KerasDigitsError  # noqa: E402
from keras_digits.io import check_output_dir, write_json, write_text  # noqa: E402
from keras_digits.lock import hold  # noqa: E402

TUNERS = ("random", "bayesian", "hyperband")
OBJECTIVES = ("val_accuracy", "val_loss", "accuracy", "loss")
TUNING_DIR = Path("tuning")
INFO_FILE = "run_info.json"
SEARCH_FILE = "search.json"
IDLE, STOPPED = trial_module.TrialStatus.IDLE, trial_module.TrialStatus.STOPPED
IDLE_WAIT_S = 2.0  # a worker told to wait asks again after this long


# ============================================================================ search spaces
def available_augments() -> list[str]:
    """Augmentation strengths the data layer offers now, weakest first ('none' always)."""
    from keras_digits import augment

    known = tuple(getattr(augment, "AUGMENTS", ("none",)))
    return ["none"] + [a for a in ("light", "medium", "strong") if a in known]


def fit_space(hp) -> dict[str, Any]:
    """Fit-time settings (TrainConfig fields); defaults are TrainConfig's defaults."""
    d = TrainConfig()
    return {
        "batch_size": hp.Choice("batch_size", [32, 64, 128], default=d.batch_size),
        "optimizer": hp.Choice("optimizer", ["adam", "sgd", "rmsprop", "adamw"], default=d.optimizer),
        "lr": hp.Float("lr", 1e-4, 1e-2, sampling="log", default=d.lr),
        "schedule": hp.Choice("schedule", ["none", "cosine", "plateau"], default=d.schedule),
        "augment": hp.Choice("augment", available_augments(), default=d.augment),
        "balance": hp.Choice("balance", list(BALANCES), default=d.balance),
    }


def generic_space(arch: str) -> Callable[[Any], dict[str, Any]]:
    """A space for archs that declare none: width (default and half), dropout, batch_norm if taken."""
    import inspect

    from keras_digits.models import model_info

    params = inspect.signature(model_info(arch).builder).parameters

    def default(name: str) -> Any:
        p = params.get(name)
        return None if p is None or p.kind != p.KEYWORD_ONLY else p.default

    def space(hp) -> dict[str, Any]:
        out: dict[str, Any] = {}
        width = default("width")
        if isinstance(width, (int, float)) and not isinstance(width, bool) and width > 0:
            half = width // 2 if isinstance(width, int) else width / 2
            if half:
                out["width"] = hp.Choice("width", sorted({half, width}), default=width)
        dropout = default("dropout")
        if isinstance(dropout, bool):
            out["dropout"] = hp.Boolean("dropout", default=dropout)
        elif isinstance(dropout, (int, float)):
            out["dropout"] = hp.Choice("dropout", sorted({0.0, 0.25, 0.5, float(dropout)}), default=float(dropout))
        batch_norm = default("batch_norm")
        if isinstance(batch_norm, bool):
            out["batch_norm"] = hp.Boolean("batch_norm", default=batch_norm)
        return out

    return space


def search_space(arch: str) -> Callable[[Any], dict[str, Any]]:
    """The arch's declared search space, else the generic one."""
    from keras_digits.models import model_info

    return model_info(arch).search_space or generic_space(arch)


def trial_config(base: TrainConfig, hp, space: Callable | None = None, epochs: int | None = None) -> TrainConfig:
    """Declare every hyperparameter on `hp` (or read its values) and return the trial's TrainConfig."""
    space = space or search_space(base.arch)
    fit = fit_space(hp)
    with hp.name_scope("model"):
        arch_kwargs = dict(space(hp))
    arch_kwargs = {k: list(v) if isinstance(v, tuple) else v for k, v in arch_kwargs.items()}
    return base.replace(**fit, model_kwargs={**dict(base.model_kwargs), **arch_kwargs},
                        epochs=int(epochs or base.epochs))


def parse_fixed(items: Sequence[str]) -> dict[str, Any]:
    """--fixed NAME=VALUE pairs (VALUE as JSON when it parses, else a string)."""
    out: dict[str, Any] = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or not name:
            raise KerasDigitsError(f"--fixed expects NAME=VALUE, got {item!r}")
        try:
            out[name] = json.loads(text)
        except json.JSONDecodeError:
            out[name] = text
    return out


def check_fixed(base: TrainConfig, fixed: dict[str, Any]) -> None:
    """Every --fixed name must be a hyperparameter of this search."""
    hp = kt.HyperParameters()
    trial_config(base, hp)
    unknown = sorted(set(fixed) - set(hp.values))
    if unknown:
        raise KerasDigitsError(f"--fixed: no hyperparameter {', '.join(unknown)} in this search; "
                               f"known: {', '.join(hp.values)}")
    from keras_digits.models.registry import _kind_ok

    for name, value in fixed.items():
        ok, wanted = _kind_ok(hp.values[name], value)
        if not ok:
            raise KerasDigitsError(f"--fixed {name}: must be {wanted}, got {value!r}")


# ============================================================================ the hypermodel
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
        from keras_digits.train import build_for, compile_model, setup_runtime

        cfg = self.config(hp)
        setup_runtime(cfg.replace(seed=cfg.seed + self.executions))  # executions differ in their seed
        self.executions += 1
        bundle = self.bundle
        model = build_for(cfg, bundle.input_shape, bundle.num_classes)
        compile_model(model, cfg)  # optimizer and lr are chosen here, with the model's options
        return model

    def fit(self, hp, model, *args, callbacks=None, epochs=None, **kwargs):
        import keras
        import numpy as np

        from keras_digits.data.datasets import make_datasets
        from keras_digits.train import schedule_callbacks

        cfg = self.config(hp, epochs=epochs)  # Hyperband passes its own epochs and initial_epoch
        pipes = make_datasets(cfg, self.bundle)
        cbs = list(callbacks or []) + schedule_callbacks(cfg.replace(verbose=0))
        if cfg.early_stopping and cfg.patience > 0:
            cbs.append(keras.callbacks.EarlyStopping(monitor=self.objective.name, mode=self.objective.direction,
                                                     patience=cfg.patience))
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


# ============================================================================ oracle: worker leases
class LeaseOracleMixin:
    """Chief-side: notice workers that went silent and give their trial to another worker.

    KerasTuner 1.4.8 waits forever for a trial whose worker died (and the chief never exits). Here
    every worker call (create_trial, its heartbeat get_trial) renews the worker's lease; a worker
    silent for `worker_timeout` seconds is dropped and its trial goes back to the retry queue. A
    worker asking for work while no new trial is left but others' trials are still running is told to
    wait (IDLE) instead of to stop, so it can take over a trial whose worker is lost.
    """

    worker_timeout: float | None = None

    @property
    def _seen(self) -> dict[str, float]:
        return self.__dict__.setdefault("_lease_seen", {})

    def _touch(self, tuner_id: str) -> None:
        self._seen[tuner_id] = time.monotonic()

    @kt.synchronized
    def create_trial(self, tuner_id):
        self._touch(tuner_id)
        self.reap_lost_workers()
        trial = super().create_trial(tuner_id)
        if trial.status == STOPPED and self.worker_timeout and self.ongoing_trials:
            self.tuner_ids.add(tuner_id)  # still part of the search: it may have to take over a trial
            return trial_module.Trial(self.get_space(), status=IDLE)
        return trial

    def get_trial(self, trial_id):
        for tuner_id, trial in list(self.ongoing_trials.items()):
            if trial.trial_id == trial_id:
                self._touch(tuner_id)
        return super().get_trial(trial_id)

    @kt.synchronized
    def end_trial(self, trial):
        for tuner_id, ongoing in list(self.ongoing_trials.items()):
            if ongoing.trial_id == trial.trial_id:
                self._touch(tuner_id)
        if trial.trial_id in self.end_order:  # a worker thought lost finished after another one
            for tuner_id, ongoing in list(self.ongoing_trials.items()):
                if ongoing.trial_id == trial.trial_id:
                    self.ongoing_trials.pop(tuner_id)
            return
        while trial.trial_id in self._retry_queue:  # a slow worker finished after all: keep its result
            self._retry_queue.remove(trial.trial_id)
        super().end_trial(trial)

    @kt.synchronized
    def reap_lost_workers(self) -> list[str]:
        if not self.worker_timeout:
            return []
        now, lost = time.monotonic(), []
        for tuner_id in sorted(self.tuner_ids):
            silent = now - self._seen.setdefault(tuner_id, now)
            if silent <= self.worker_timeout:
                continue
            lost.append(tuner_id)
            self.tuner_ids.discard(tuner_id)
            trial = self.ongoing_trials.pop(tuner_id, None)
            what = "no trial"
            if trial is not None:
                self._retry_queue.append(trial.trial_id)
                what = f"trial {trial.trial_id} goes back to the queue"
            print(f"worker {tuner_id} silent for {silent:.0f} s, considered lost: {what}", flush=True)
        if lost:
            self.save()
        return lost


_ORACLES: dict[str, type] = {}


def oracle_class(kind: str) -> type:
    if kind not in _ORACLES:
        base = {"random": kt.oracles.RandomSearchOracle, "bayesian": kt.oracles.BayesianOptimizationOracle,
                "hyperband": kt.oracles.HyperbandOracle}[kind]
        _ORACLES[kind] = type(f"Lease{base.__name__}", (LeaseOracleMixin, base), {})
    return _ORACLES[kind]


def make_oracle(kind: str, objective: kt.Objective, max_trials: int, max_epochs: int, seed: int,
                fixed: dict[str, Any]):
    hps = kt.HyperParameters()
    for name, value in fixed.items():
        hps.Fixed(name, value)
    common = dict(objective=objective, seed=seed, hyperparameters=hps if fixed else None)
    cls = oracle_class(kind)
    if kind == "random":
        return cls(max_trials=max_trials, **common)
    if kind == "bayesian":
        return cls(max_trials=max_trials, num_initial_points=max(2, min(10, max_trials // 3)), **common)
    # Hyperband brackets repeat until --max-trials (it has no max_trials of its own; the base Oracle's cap works)
    oracle = cls(max_epochs=max_epochs, factor=3, hyperband_iterations=None, **common)
    oracle.max_trials = max_trials
    return oracle


# ============================================================================ the tuner
class _Heartbeat(threading.Thread):
    """Worker-side: ask the chief about the running trial every `interval` s (renews the lease)."""

    def __init__(self, oracle, trial_id: str, interval: float):
        super().__init__(daemon=True, name=f"heartbeat-{trial_id}")
        self.oracle, self.trial_id, self.interval = oracle, trial_id, interval
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(self.interval):
            try:
                self.oracle.get_trial(self.trial_id)
            except Exception:  # noqa: BLE001  (the chief may be busy or gone; the next beat retries)
                pass

    def stop(self) -> None:
        self.done.set()


class RestartProcess(Exception):
    """Raised after a finished trial when the process should start afresh (memory) and resume."""


class DigitsTunerMixin:
    """Per-trial bookkeeping (run_info.json, RSS, memory release), heartbeats, reports."""

    def __init__(self, oracle, hypermodel: DigitsHyperModel, *, role: str = "single", heartbeat_s: float = 30.0,
                 report: Callable[[Any], None] | None = None, max_rss_mb: float = 0.0, **kwargs):
        self.role, self.heartbeat_s, self._report, self.max_rss_mb = role, heartbeat_s, report, max_rss_mb
        self._heartbeat: _Heartbeat | None = None
        self._t0 = 0.0
        kt.Tuner.__init__(self, oracle=oracle, hypermodel=hypermodel, **kwargs)
        if role == "worker":  # KerasTuner re-asks at once on IDLE; make the wait polite
            create = self.oracle.create_trial

            def create_trial(tuner_id):
                trial = create(tuner_id)
                if trial.status == IDLE:
                    time.sleep(IDLE_WAIT_S)
                return trial

            self.oracle.create_trial = create_trial

    def _populate_initial_space(self):
        if self.role == "chief":  # declare only: the chief builds no model and loads no data
            hp = self.oracle.get_space()
            self.hypermodel.declare_hyperparameters(hp)
            self.oracle.update_space(hp)
        else:  # builds the default model once: a bad arch option fails here, not as failed trials
            super()._populate_initial_space()
            _release_memory()

    def info_path(self, trial_id: str) -> Path:
        return Path(self.get_trial_dir(trial_id)) / INFO_FILE

    def on_trial_begin(self, trial):
        super().on_trial_begin(trial)
        self.hypermodel.start_trial()
        self._t0 = time.perf_counter()
        path = self.info_path(trial.trial_id)
        old = _read_json(path)
        attempts = list(old.pop("attempts", [])) + ([old] if old else [])
        self._info = {"trial_id": trial.trial_id, "tuner_id": self.tuner_id, "host": socket.gethostname(),
                      "pid": os.getpid(), "started": _now(), "status": "RUNNING", "attempts": attempts}
        write_json(path, self._info)
        if self.role == "worker":
            self._heartbeat = _Heartbeat(self.oracle, trial.trial_id, self.heartbeat_s)
            self._heartbeat.start()

    def on_trial_end(self, trial):
        if self._heartbeat is not None:
            self._heartbeat.stop()
            self._heartbeat = None
        _release_memory()  # the trial's model, graphs and pipelines go before the next one is built
        hm = self.hypermodel
        value = hm.objective_value()
        info = {**self._info, "status": trial.status, "finished": _now(),
                "seconds": round(time.perf_counter() - self._t0, 2), "fit_seconds": round(hm.fit_seconds, 2),
                "epochs": hm.epochs, "executions": hm.executions, hm.objective.name: value,
                "rss_mb": round(rss_mb(), 1)}
        if trial.message:
            info["error"] = trial.message.strip().splitlines()[-1]
        write_json(self.info_path(trial.trial_id), info)  # before end_trial: the chief's table reads it
        super().on_trial_end(trial)
        score = "n/a" if value is None else f"{value:.4f}"
        line = (f"trial {trial.trial_id} done ({self.tuner_id}): {hm.objective.name} {score}, "
                f"{hm.epochs} epochs, {info['seconds']:.1f} s, RSS {info['rss_mb']:.0f} MB")
        if trial.status != trial_module.TrialStatus.COMPLETED:
            line += f" [{trial.status}: {info.get('error', '')}]"
        print(line, flush=True)
        if self._report is not None:
            self._report(self.oracle)
        remaining = None if self.role == "worker" else self.oracle.remaining_trials()
        if self.max_rss_mb and info["rss_mb"] > self.max_rss_mb and remaining != 0:
            raise RestartProcess(f"RSS {info['rss_mb']:.0f} MB > --max-rss-mb {self.max_rss_mb:.0f}")

    def on_search_end(self):
        super().on_search_end()
        if self._report is not None:
            self._report(self.oracle)


class DigitsTuner(DigitsTunerMixin, kt.Tuner):
    """Random search and Bayesian optimisation (the oracle decides)."""


class DigitsHyperbandTuner(DigitsTunerMixin, kt.Hyperband):
    """Hyperband: epochs per trial from the oracle, weights carried over from the parent trial."""


def _release_memory() -> None:
    import keras

    keras.backend.clear_session()
    gc.collect()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


# ============================================================================ reports
def trial_rows(oracle, project_dir: Path, objective: str) -> tuple[list[dict[str, Any]], list[str]]:
    """One row per trial (sorted by id) and the hyperparameter column names."""
    rows, hp_names = [], [hp.name for hp in oracle.get_space().space]
    for trial_id in sorted(oracle.trials, key=lambda t: (len(t), t)):
        trial = oracle.trials[trial_id]
        info = _read_json(project_dir / f"trial_{trial_id}" / INFO_FILE)
        values = dict(trial.hyperparameters.values)
        for name in values:
            if name not in hp_names:
                hp_names.append(name)
        rows.append({"trial": trial_id, "status": trial.status, objective: trial.score,
                     "epochs": info.get("epochs"), "seconds": info.get("seconds"), "worker": info.get("tuner_id"),
                     "rss_mb": info.get("rss_mb"), **values})
    return rows, hp_names


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.0f}"
    return str(value)


def write_reports(oracle, project_dir: Path, hypermodel: DigitsHyperModel) -> TrainConfig | None:
    """trials.csv, trials.md, best_trial.json and best_config.json; returns the best config (or None)."""
    objective = hypermodel.objective.name
    rows, hp_names = trial_rows(oracle, project_dir, objective)
    columns = ["trial", "status", objective, "epochs", "seconds", "worker", "rss_mb", *hp_names]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row.get(k) for k in columns})
    write_text(project_dir / "trials.csv", buf.getvalue())

    best = [t for t in oracle.get_best_trials(1) if t.status == trial_module.TrialStatus.COMPLETED]
    best_id = best[0].trial_id if best else None
    done = sum(r["status"] == trial_module.TrialStatus.COMPLETED for r in rows)
    lines = [f"# Tuning {hypermodel.base.arch} on {hypermodel.base.dataset}", "",
             f"{len(rows)} trials, {done} completed; objective {objective} "
             f"({hypermodel.objective.direction}); best: trial {best_id if best_id is not None else '-'} (*)", "",
             "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [_fmt(row.get(c)) for c in columns]
        if row["trial"] == best_id:
            cells[0] += " *"
        lines.append("| " + " | ".join(cells) + " |")
    write_text(project_dir / "trials.md", "\n".join(lines) + "\n")

    if not best:
        return None
    cfg = hypermodel.config(best[0].hyperparameters.copy()).replace(verbose=TrainConfig().verbose)
    write_json(project_dir / "best_trial.json", {"trial_id": best_id, objective: best[0].score,
                                                 "hyperparameters": best[0].hyperparameters.values})
    write_json(project_dir / "best_config.json", cfg.to_dict())
    return cfg


# ============================================================================ the chief's server
def serve_oracle(tuner, on_change: Callable[[], None], poll_s: float = 0.5) -> None:
    """Serve the oracle over gRPC until every trial is done and every worker has been told to stop.

    KerasTuner's `oracle_chief.start_server` with two changes: lost workers are reaped while serving,
    and the exit check runs every `poll_s` seconds instead of every 20.
    """
    from concurrent import futures

    import grpc
    from keras_tuner.src import protos
    from keras_tuner.src.distribute.oracle_chief import OracleServicer, exit_chief

    oracle = tuner.oracle
    address = f"{os.environ['KERASTUNER_ORACLE_IP']}:{os.environ['KERASTUNER_ORACLE_PORT']}"
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    servicer = OracleServicer(oracle)
    protos.get_service_grpc().add_OracleServicer_to_server(servicer, server)
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError:
        bound = 0
    if not bound:
        raise KerasDigitsError(f"the chief cannot listen on {address} (port in use, or not this host's address?)")
    server.start()
    print(f"chief: oracle serving on {address}; waiting for workers", flush=True)
    seen = None
    try:
        while True:
            time.sleep(poll_s)
            oracle.reap_lost_workers()
            state = (len(oracle.end_order), len(oracle.trials))
            if state != seen:
                seen = state
                with oracle_lock(oracle):  # gRPC threads change the trials while the table is written
                    on_change()
            if servicer.stop_triggered and exit_chief(oracle):
                break
    finally:
        server.stop(grace=2)


@contextlib.contextmanager
def oracle_lock(oracle):
    """Hold the lock KerasTuner's @synchronized takes for this oracle (synchronized calls inside pass)."""
    from keras_tuner.src.engine.oracle import LOCKS, THREADS

    with LOCKS[oracle]:
        THREADS[oracle] = threading.current_thread().name
        try:
            yield
        finally:
            THREADS[oracle] = None


# ============================================================================ CLI
def role_from_env() -> str:
    """'single', 'chief' or 'worker' from the KERASTUNER_* variables."""
    try:
        if not dist_utils.has_chief_oracle():
            return "single"
    except RuntimeError as exc:
        raise KerasDigitsError(str(exc).replace("\n", " ")) from None
    return "chief" if dist_utils.is_chief_oracle() else "worker"


def build_parser() -> argparse.ArgumentParser:
    from keras_digits.data import list_datasets
    from keras_digits.models import list_models

    p = argparse.ArgumentParser(
        prog="python -m keras_digits.tune",
        description="KerasTuner search over an arch's search space and the fit-time settings; resumable, "
                    "distributable (see the module docstring for chief/worker commands).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("what to tune")
    g.add_argument("--arch", default="simple_cnn", help=f"one of: {', '.join(list_models())}")
    g.add_argument("--dataset", default="digits", help=f"one of: {', '.join(list_datasets())}")
    g.add_argument("--data-dir", default=None, help="folder holding the dataset's file(s)")
    g.add_argument("--max-train-samples", type=positive_int, default=None, help="stratified training subset")
    g.add_argument("--image-size", type=positive_int, default=None, help="working resolution; unset: the arch's default")
    g.add_argument("--seed", type=int, default=42, help="seed of the data split, the oracle and the trials")
    g.add_argument("--fixed", action="append", default=[], metavar="NAME=VALUE",
                   help="pin a hyperparameter (repeatable), e.g. optimizer=adam or model/batch_norm=false")
    g = p.add_argument_group("search")
    g.add_argument("--tuner", default="random", help=f"one of: {', '.join(TUNERS)}")
    g.add_argument("--max-trials", type=int, default=10, help="number of trials (all runs of the project together)")
    g.add_argument("--executions-per-trial", type=int, default=1, help="trainings per trial (seeds differ)")
    g.add_argument("--objective", default="val_accuracy", help=f"one of: {', '.join(OBJECTIVES)}")
    g.add_argument("--max-epochs", type=int, default=10, help="epochs per trial (Hyperband: the most)")
    g.add_argument("--patience", type=int, default=3, help="early stopping on the objective inside trials (0: off)")
    g.add_argument("--worker-timeout", type=float, default=120.0,
                   help="distributed: seconds without a heartbeat before a worker's trial is given to another")
    g.add_argument("--tensorboard", action=argparse.BooleanOptionalAction, default=True,
                   help="TensorBoard logs with the HParams dashboard in PROJECT/tb")
    g.add_argument("--max-rss-mb", type=float, default=0.0,
                   help="after a trial that leaves this process above this many MB, restart the process (exec) "
                        "and resume: Keras/TF keep ~25 MB per trial however memory is cleared (0: never)")
    g.add_argument("--verbose", type=int, choices=(0, 1, 2), default=1, help="Keras fit and tuner verbosity")
    g = p.add_argument_group("files")
    g.add_argument("--directory", default=str(TUNING_DIR), help="tuning root folder")
    g.add_argument("--project", default=None, help="project folder name (default <dataset>-<arch>-<tuner>)")
    g.add_argument("--overwrite", action="store_true", help="start the project over (and replace --run-dir)")
    g.add_argument("--retrain-best", action="store_true", help="train best_config.json into a run dir afterwards")
    g.add_argument("--run-dir", default=None, help="run dir for --retrain-best (default runs/tuned-<project>)")
    return p


def validate_args(args: argparse.Namespace) -> None:
    from keras_digits.data import get_spec
    from keras_digits.models import model_info

    model_info(args.arch)  # unknown names raise KerasDigitsError listing the known ones
    get_spec(args.dataset)
    if args.tuner not in TUNERS:
        raise KerasDigitsError(f"unknown tuner {args.tuner!r}; choose one of: {', '.join(TUNERS)}")
    if args.objective not in OBJECTIVES:
        raise KerasDigitsError(f"unknown objective {args.objective!r}; choose one of: {', '.join(OBJECTIVES)}")
    for flag in ("max_trials", "executions_per_trial", "max_epochs"):
        if getattr(args, flag) <= 0:
            raise KerasDigitsError(f"--{flag.replace('_', '-')} must be positive, got {getattr(args, flag)}")
    if args.patience < 0:
        raise KerasDigitsError(f"--patience must be >= 0, got {args.patience}")
    if args.max_rss_mb < 0:
        raise KerasDigitsError(f"--max-rss-mb must be >= 0, got {args.max_rss_mb}")
    if args.worker_timeout < 0:
        raise KerasDigitsError(f"--worker-timeout must be >= 0, got {args.worker_timeout}")
    if args.run_dir and not args.retrain_best:
        raise KerasDigitsError("--run-dir is for --retrain-best")
    if args.project is not None and (not args.project.strip() or args.project in (".", "..")
                                     or any(sep in args.project for sep in ("/", "\\", os.sep))):
        raise KerasDigitsError(f"--project {args.project!r} must be a plain folder name (no path separators); "
                               "use --directory for where projects go")


def search_settings(args: argparse.Namespace) -> dict[str, Any]:
    """What defines a search; a project resumed with other values is refused."""
    return {"arch": args.arch, "dataset": args.dataset, "tuner": args.tuner, "objective": args.objective,
            "max_train_samples": args.max_train_samples, "image_size": args.image_size, "seed": args.seed,
            "max_epochs": args.max_epochs, "fixed": parse_fixed(args.fixed)}


def check_project(project_dir: Path, settings: dict[str, Any]) -> None:
    old = _read_json(project_dir / SEARCH_FILE)
    diff = sorted(k for k in settings if k in old and old[k] != settings[k])
    if diff:
        was = ", ".join(f"{k}={old[k]!r}" for k in diff)
        raise KerasDigitsError(f"{project_dir} holds a search with {was}; rerun with those, or pass --overwrite "
                               "or another --project")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    validate_args(args)
    role = role_from_env()
    project = args.project or f"{args.dataset}-{args.arch}-{args.tuner}"
    directory = Path(args.directory)
    project_dir = directory / project
    overwrite = args.overwrite
    if role == "worker" and (overwrite or args.retrain_best):
        print("note: --overwrite and --retrain-best are for the chief; this worker ignores them", file=sys.stderr)
        overwrite = False
    settings = search_settings(args)
    if not overwrite:
        check_project(project_dir, settings)

    base = TrainConfig(arch=args.arch, dataset=args.dataset, data_dir=args.data_dir, epochs=args.max_epochs,
                       patience=args.patience, seed=args.seed, max_train_samples=args.max_train_samples,
                       image_size=args.image_size, early_stopping=args.patience > 0, verbose=args.verbose)
    fixed = settings["fixed"]
    check_fixed(base, fixed)
    hypermodel = DigitsHyperModel(base, args.objective)
    if role != "chief":
        hypermodel.bundle  # noqa: B018  (load the data now: a missing file is one error, not failed trials)
    oracle = make_oracle(args.tuner, hypermodel.objective, args.max_trials, args.max_epochs, args.seed, fixed)
    oracle.worker_timeout = args.worker_timeout if role == "chief" else None
    if role != "worker":  # workers share the chief's project folder by design
        check_output_dir(project_dir, "tuner project")
        with hold(project_dir, "tuner project"):
            return run_search(args, argv, role, project, directory, project_dir, overwrite, settings, hypermodel,
                              oracle)
    return run_search(args, argv, role, project, directory, project_dir, overwrite, settings, hypermodel, oracle)


def run_search(args, argv, role, project, directory, project_dir, overwrite, settings, hypermodel, oracle) -> int:
    """Run the search (single process, chief or worker), then report and optionally retrain the best."""

    def report(o=None) -> TrainConfig | None:
        return write_reports(o if o is not None else tuner.oracle, project_dir, hypermodel)

    tuner_cls = DigitsHyperbandTuner if args.tuner == "hyperband" else DigitsTuner
    heartbeat = max(1.0, args.worker_timeout / 4) if args.worker_timeout else 30.0
    tuner = tuner_cls(oracle, hypermodel, role=role, heartbeat_s=heartbeat, max_rss_mb=args.max_rss_mb,
                      report=None if role == "worker" else report, directory=str(directory),
                      project_name=project, overwrite=overwrite, executions_per_trial=args.executions_per_trial)
    if role != "worker":
        write_json(project_dir / SEARCH_FILE, settings)

    import keras

    callbacks = [keras.callbacks.TensorBoard(log_dir=str(project_dir / "tb"), histogram_freq=0, write_graph=False)
                 ] if args.tensorboard else []
    if role == "chief":
        tuner.oracle.verbose = args.verbose
        tuner.save()
        serve_oracle(tuner, on_change=report)
    else:
        try:
            tuner.search(epochs=args.max_epochs, callbacks=callbacks, verbose=args.verbose)
        except RestartProcess as exc:  # every finished trial is saved: a fresh process resumes the search
            restart_argv = [a for a in (sys.argv[1:] if argv is None else argv) if a != "--overwrite"]
            print(f"{exc}: restarting the process to resume with fresh memory", flush=True)
            sys.stderr.flush()
            os.execv(sys.executable, [sys.executable, "-m", "keras_digits.tune", *restart_argv])
        except RuntimeError as exc:
            if "consecutive failures" not in str(exc):
                raise
            last = [line for line in str(exc).strip().splitlines() if line.strip()][-1]
            raise KerasDigitsError(f"search stopped after {oracle.max_consecutive_failed_trials} failed trials "
                                   f"in a row; last error: {last}") from None
    if role == "worker":
        print(f"worker {tuner.tuner_id}: search finished", flush=True)
        return 0

    best = report()
    if best is None:
        print(f"no completed trial yet; table in {project_dir / 'trials.md'}")
        return 0
    info = _read_json(project_dir / "best_trial.json")
    print(f"best trial {info.get('trial_id')}: {args.objective} {info.get(args.objective):.4f}; "
          f"table {project_dir / 'trials.md'}; config {project_dir / 'best_config.json'}")
    if args.retrain_best:
        from keras_digits.train import RUNS_DIR, train_and_evaluate

        run_dir = Path(args.run_dir) if args.run_dir else RUNS_DIR / f"tuned-{project}"
        metrics = train_and_evaluate(best.replace(verbose=args.verbose), run_dir, overwrite=args.overwrite)
        split = "test" if "test" in metrics else "val"
        print(f"retrained best config into {run_dir}: {split} accuracy {metrics[split]['accuracy']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
