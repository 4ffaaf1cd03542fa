"""Distributed search: the chief's oracle with worker leases, the workers' heartbeat, the chief's
gRPC server, and which role this process plays.

This is the one module that relies on KerasTuner internals (keras-tuner is pinned to >=1.4.8,<1.5 in
pyproject.toml because these can change in any release):
- `keras_tuner.src.distribute.utils`: `has_chief_oracle`, `is_chief_oracle` (role from KERASTUNER_*);
- `keras_tuner.src.distribute.oracle_client`: `OracleClient` (used by keras_digits.studies.workers) and its
  per-call deadline `TIMEOUT` (an hour), set to --worker-wait for this process's calls;
- `keras_tuner.src.distribute.oracle_chief`: `OracleServicer`, `exit_chief`; `keras_tuner.src.protos`
  (`get_service_grpc`): the chief's gRPC service, served here with lost-worker reaping;
- `keras_tuner.src.engine.oracle`: `LOCKS`, `THREADS` (the lock behind `@kt.synchronized`);
- Oracle attributes `ongoing_trials`, `tuner_ids`, `end_order`, `_retry_queue` and
  `remaining_trials()` (the lease bookkeeping).

The gRPC channel is unauthenticated and binds exactly KERASTUNER_ORACLE_IP: 0.0.0.0 exposes it on
every interface. Use a trusted network.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import keras_tuner as kt
from keras_tuner.engine.trial import Trial, TrialStatus
from keras_tuner.src.distribute import utils as dist_utils

from keras_digits.errors import KerasDigitsError

IDLE, STOPPED = TrialStatus.IDLE, TrialStatus.STOPPED


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
            return Trial(self.get_space(), status=IDLE)
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
                what = f"trial {int(trial.trial_id) + 1} (trial_{trial.trial_id}) goes back to the queue"
            print(f"worker {tuner_id} silent for {silent:.0f} s, considered lost: {what}", flush=True)
        if lost:
            self.save()
        return lost


_ORACLES: dict[str, type] = {}


def oracle_class(kind: str) -> type:
    if kind not in _ORACLES:
        base = {
            "random": kt.oracles.RandomSearchOracle,
            "bayesian": kt.oracles.BayesianOptimizationOracle,
            "hyperband": kt.oracles.HyperbandOracle,
        }[kind]
        _ORACLES[kind] = type(f"Lease{base.__name__}", (LeaseOracleMixin, base), {})
    return _ORACLES[kind]


def make_oracle(kind: str, objective: kt.Objective, max_trials: int, max_epochs: int, seed: int, fixed: dict[str, Any]):
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


class Heartbeat(threading.Thread):
    """Worker-side: ask the chief about the running trial every `interval` s (renews the lease). When the chief
    stops answering, `log` says so once: the trial is finished (its files stay for a restarted chief), then
    reporting it fails after --worker-wait and the worker stops with one line."""

    def __init__(self, oracle, trial_id: str, interval: float, who: str = "worker", log: Callable[[str], None] = print):
        super().__init__(daemon=True, name=f"heartbeat-{trial_id}")
        self.oracle, self.trial_id, self.interval = oracle, trial_id, interval
        self.who, self.log = who, log
        self.done = threading.Event()
        self.warned = False

    def run(self) -> None:
        while not self.done.wait(self.interval):
            try:
                self.oracle.get_trial(self.trial_id)
            except Exception as exc:
                if not self.warned and not self.done.is_set():
                    self.warned = True
                    self.log(
                        f"{self.who}: the chief's oracle does not answer ({rpc_reason(exc)}); this trial finishes, "
                        "then the worker stops if the chief is still gone"
                    )

    def stop(self) -> None:
        self.done.set()


def rpc_reason(exc: BaseException) -> str:
    """'UNAVAILABLE' / 'DEADLINE_EXCEEDED' for a gRPC error, else the exception's type name."""
    code = getattr(exc, "code", None)
    try:
        return code().name if callable(code) else type(exc).__name__
    except Exception:
        return type(exc).__name__


def set_rpc_deadline(seconds: float) -> None:
    """Give every call this process makes to the chief's oracle a deadline of `seconds` (KerasTuner's is an
    hour, with the call waiting silently for the chief all that time)."""
    from keras_tuner.src.distribute import oracle_client

    oracle_client.TIMEOUT = max(1.0, float(seconds))


def lost_chief(exc: BaseException, who: str, wait_s: float) -> KerasDigitsError | None:
    """The one-line error for a worker whose call to the chief's oracle failed (a gRPC error), else None."""
    import grpc

    if not isinstance(exc, grpc.RpcError):
        return None
    address = f"{os.environ.get('KERASTUNER_ORACLE_IP', '')}:{os.environ.get('KERASTUNER_ORACLE_PORT', '')}"
    return KerasDigitsError(
        f"{who}: lost the chief's oracle at {address} ({rpc_reason(exc)} after at most {wait_s:g} s, "
        "--worker-wait); this worker stops: restart the chief, then the workers, with the same command to resume"
    )


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


def oracle_client(oracle):
    """Worker-side: KerasTuner's gRPC client of the chief's oracle (KERASTUNER_* variables); `oracle` gives
    the search space."""
    from keras_tuner.src.distribute.oracle_client import OracleClient

    return OracleClient(oracle)


def wait_for_chief(who: str, wait_s: float | None = None, log: Callable[[str], None] | None = None) -> float:
    """Worker-side: wait until the chief's oracle (KERASTUNER_ORACLE_IP/PORT) accepts connections, saying so
    every few seconds; one KerasDigitsError after `wait_s` seconds (--worker-wait): KerasTuner's own client
    would wait an hour in silence."""
    from keras_digits.runtime.tfconfig import DEFAULT_WORKER_WAIT, say, wait_for

    address = f"{os.environ.get('KERASTUNER_ORACLE_IP', '')}:{os.environ.get('KERASTUNER_ORACLE_PORT', '')}"
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise KerasDigitsError(f"KERASTUNER_ORACLE_IP/KERASTUNER_ORACLE_PORT give {address!r}, not a host and port")
    wait_s = DEFAULT_WORKER_WAIT if wait_s is None else wait_s
    waited = wait_for([("the chief's oracle", address)], wait_s, who, log=log or say)
    set_rpc_deadline(wait_s)  # a chief that accepts connections but never answers, or dies later: one line
    return waited


def role_from_env() -> str:
    """'single', 'chief' or 'worker' from the KERASTUNER_* variables."""
    try:
        if not dist_utils.has_chief_oracle():
            return "single"
    except RuntimeError as exc:
        raise KerasDigitsError(str(exc).replace("\n", " ")) from None
    return "chief" if dist_utils.is_chief_oracle() else "worker"
