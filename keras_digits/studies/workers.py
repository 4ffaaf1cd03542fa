"""A grid's runs (a sweep's or a study's) spread over worker processes, with KerasTuner's distributed
oracle as the engine: the same chief/worker set-up `tune` uses, now handing out a fixed list.

The chief (KERASTUNER_TUNER_ID=chief) serves an oracle over one hyperparameter, the index of a run in
the grid's plan; each worker (any other KERASTUNER_TUNER_ID, the same
KERASTUNER_ORACLE_IP/PORT) asks it for a run, trains it into the shared OUT/runs/ folder (or reads it
back if it is already finished), reports it and asks again. The oracle hands out every index once;
a worker silent for --worker-timeout seconds is considered lost and its run goes back to the queue
(keras_digits.runtime.oracle.LeaseOracleMixin), where another worker resumes it from its last
finished epoch (the run directory's own backup). When every run has ended the chief writes the tables
by reading the run directories back, exactly as a single-process grid does.

All processes must see OUT on one file system and run the same command (same options, same grid).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from types import SimpleNamespace

from keras_digits.errors import KerasDigitsError

ROLE_ENV = "KERASTUNER_TUNER_ID"
HP = "run"
OBJECTIVE = "val_accuracy"
DEFAULT_WORKER_TIMEOUT = 120.0
HEARTBEAT_S = 3.0  # a worker renews its lease this often while it trains a run
MIN_WORKER_TIMEOUT = 10.0


def grid_role() -> str:
    """'single', 'chief' or 'worker' from the KERASTUNER_* variables (keras_tuner imported only when set)."""
    if not any(k.startswith("KERASTUNER_") for k in os.environ):
        return "single"
    from keras_digits.runtime.oracle import role_from_env

    return role_from_env()


def _oracle(n_runs: int, out, worker_timeout: float | None):
    import keras_tuner as kt
    from keras_tuner.engine.trial import TrialStatus

    from keras_digits.runtime.oracle import LeaseOracleMixin

    class FixedListOracle(kt.Oracle):
        """Hands out run 0, 1, ..., n-1 in order, each once (a lost worker's comes back through the
        base Oracle's retry queue, which create_trial serves before asking for a new one)."""

        def populate_space(self, trial_id):
            index = len(self.trials)  # trials created so far; this one is not stored yet
            if index < n_runs:
                return {"status": TrialStatus.RUNNING, "values": {HP: index}}
            return {"status": TrialStatus.IDLE if self.ongoing_trials else TrialStatus.STOPPED, "values": None}

    cls = type("LeaseFixedListOracle", (LeaseOracleMixin, FixedListOracle), {})
    hps = kt.HyperParameters()
    hps.Choice(HP, list(range(n_runs)), ordered=True)
    oracle = cls(
        objective=kt.Objective(OBJECTIVE, "max"),
        max_trials=n_runs,
        hyperparameters=hps,
        max_consecutive_failed_trials=n_runs + 1,
    )  # a failed run must not end the grid
    oracle.worker_timeout = worker_timeout
    oracle._set_project_dir(str(out), ".grid-oracle")
    return oracle


def serve_grid(
    n_runs: int, out, worker_timeout: float | None = DEFAULT_WORKER_TIMEOUT, log: Callable[[str], None] = print
) -> None:
    """Chief: hand out runs 0..n_runs-1 to the workers until every one has ended."""
    from keras_digits.runtime.oracle import serve_oracle

    if worker_timeout is not None and worker_timeout < MIN_WORKER_TIMEOUT:
        raise KerasDigitsError(
            f"--worker-timeout must be at least {MIN_WORKER_TIMEOUT:g} s (workers report every "
            f"{HEARTBEAT_S:g} s), got {worker_timeout:g}"
        )

    oracle = _oracle(n_runs, out, worker_timeout)
    oracle.verbose = 0

    def progress() -> None:
        log(f"chief: {len(oracle.end_order)}/{n_runs} run(s) ended, {len(oracle.ongoing_trials)} running")

    log(f"chief: {n_runs} run(s) to hand out")
    serve_oracle(SimpleNamespace(oracle=oracle), on_change=progress)
    from keras_tuner.engine.trial import TrialStatus

    failed = [t for t in oracle.trials.values() if t.status != TrialStatus.COMPLETED]
    if failed:
        log(f"chief: {len(failed)} run(s) failed on their workers; they are trained here now")


def work_grid(
    runs: Sequence,
    execute: Callable[[int], float],
    heartbeat_s: float = HEARTBEAT_S,
    log: Callable[[str], None] = print,
    wait_s: float | None = None,
) -> int:
    """Worker: wait for the chief's oracle (at most `wait_s` seconds, --worker-wait), ask it for runs,
    `execute(index)` each (returns its validation accuracy, NaN if it diverged), report it; returns how many
    runs this worker ended. A run that fails here is reported failed (the chief trains it at the end) and
    the worker carries on."""
    from keras_tuner.engine.trial import TrialStatus

    from keras_digits.runtime.oracle import Heartbeat, oracle_client, rpc_reason, wait_for_chief

    tuner_id = os.environ[ROLE_ENV]
    wait_for_chief(f"worker {tuner_id}", wait_s)
    client = oracle_client(_oracle(len(runs), ".", None))
    done, asked = 0, False
    while True:
        try:
            trial = client.create_trial(tuner_id)
        except Exception as exc:
            if asked:  # it answered before: it has ended (every run handed out), or died, which it reports
                log(
                    f"worker {tuner_id}: the chief no longer answers ({rpc_reason(exc)}); stopping "
                    f"({done} run(s) ended here)"
                )
                return done
            raise KerasDigitsError(
                f"worker {tuner_id}: cannot reach the chief at "
                f"{os.environ.get('KERASTUNER_ORACLE_IP')}:{os.environ.get('KERASTUNER_ORACLE_PORT')}"
                f" ({rpc_reason(exc)}, --worker-wait)"
            ) from None
        asked = True
        if trial.status == TrialStatus.STOPPED:
            log(f"worker {tuner_id}: no runs left ({done} ended here)")
            return done
        if trial.status == TrialStatus.IDLE:  # others' runs still going: one may come back to the queue
            time.sleep(1.0)
            continue
        index = int(trial.hyperparameters.get(HP))
        beat = Heartbeat(client, trial.trial_id, heartbeat_s, who=f"worker {tuner_id}", log=log)
        beat.start()
        try:
            score = execute(index)
            trial.status = TrialStatus.COMPLETED
        except Exception as exc:
            log(f"worker {tuner_id}: run {index + 1} failed: {type(exc).__name__}: {exc}")
            score, trial.status = float("nan"), TrialStatus.FAILED
        finally:
            beat.stop()
        done += 1
        try:
            client.update_trial(trial.trial_id, {OBJECTIVE: -1.0 if score != score else float(score)})
            client.end_trial(trial)
        except Exception as exc:
            log(f"worker {tuner_id}: could not report run {index + 1} to the chief ({rpc_reason(exc)}); stopping")
            return done
