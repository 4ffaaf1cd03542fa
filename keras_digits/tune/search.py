"""The tuners: per-trial bookkeeping (trial_<id>/run_info.json, RSS), memory released after every
trial and the `--max-rss-mb` restart, heartbeats on workers, the reports rewritten as trials end."""

from __future__ import annotations

import gc
import os
import socket
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import keras_tuner as kt
from keras_tuner.engine.trial import TrialStatus

from keras_digits.runtime.oracle import IDLE, Heartbeat
from keras_digits.tune.hypermodel import rss_mb
from keras_digits.tune.report import INFO_FILE, trial_number
from keras_digits.utils.io import read_json_object, write_json

IDLE_WAIT_S = 2.0  # a worker told to wait asks again after this long


class RestartProcess(Exception):
    """Raised after a finished trial when the process should start afresh (memory) and resume."""


class DigitsTunerMixin:
    """Per-trial bookkeeping (run_info.json, RSS, memory release), heartbeats, reports."""

    def __init__(
        self,
        oracle,
        hypermodel,
        *,
        role: str = "single",
        heartbeat_s: float = 30.0,
        report: Callable[[Any], None] | None = None,
        max_rss_mb: float = 0.0,
        **kwargs,
    ):
        self.role, self.heartbeat_s, self._report, self.max_rss_mb = role, heartbeat_s, report, max_rss_mb
        self._heartbeat: Heartbeat | None = None
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
        old = read_json_object(path, lenient=True)
        attempts = list(old.pop("attempts", [])) + ([old] if old else [])
        self._info = {
            "trial_id": trial.trial_id,
            "tuner_id": self.tuner_id,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": _now(),
            "status": "RUNNING",
            "attempts": attempts,
        }
        write_json(path, self._info)
        if self.role == "worker":
            who = f"worker {self.tuner_id}"
            self._heartbeat = Heartbeat(self.oracle, trial.trial_id, self.heartbeat_s, who=who)
            self._heartbeat.start()

    def on_trial_end(self, trial):
        if self._heartbeat is not None:
            self._heartbeat.stop()
            self._heartbeat = None
        _release_memory()  # the trial's model, graphs and pipelines go before the next one is built
        hm = self.hypermodel
        value = hm.objective_value()
        info = {
            **self._info,
            "status": trial.status,
            "finished": _now(),
            "seconds": round(time.perf_counter() - self._t0, 2),
            "fit_seconds": round(hm.fit_seconds, 2),
            "epochs": hm.epochs,
            "executions": hm.executions,
            hm.objective.name: value,
            "rss_mb": round(rss_mb(), 1),
        }
        if trial.message:
            info["error"] = trial.message.strip().splitlines()[-1]
        write_json(self.info_path(trial.trial_id), info)  # before end_trial: the chief's table reads it
        super().on_trial_end(trial)
        score = "n/a" if value is None else f"{value:.4f}"
        line = (
            f"trial {trial_number(trial.trial_id)} done (trial_{trial.trial_id}, {self.tuner_id}): "
            f"{hm.objective.name} {score}, "
            f"{hm.epochs} epochs, {info['seconds']:.1f} s, RSS {info['rss_mb']:.0f} MB"
        )
        if trial.status != TrialStatus.COMPLETED:
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
