"""TF_CONFIG, read and checked before TensorFlow sees it: `--strategy multiworker` builds
tf.distribute.MultiWorkerMirroredStrategy from it, and a mistake in it should be one clear line, not
a hang or a gRPC error minutes later.

    TF_CONFIG='{"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": 0}}'

The cluster holds "worker" (and optionally one "chief") entries, each "host:port". The chief is the
"chief" task if there is one, else worker 0: it alone writes the run directory. This process's own
entry must name an address of this machine (checked by binding to it).

Before TensorFlow joins the cluster (a blocking C++ call that sees no signals), `wait_for_workers` waits in
Python until every other task accepts TCP connections on its address, listening on this task's own address
meanwhile so the others see it too; it says what it waits for every few seconds, gives up after
`--worker-wait` seconds, and SIGTERM or Ctrl-C end it at once. `wait_for` is the same wait for any address
(a tuner or grid worker waiting for the chief's oracle).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from keras_digits.errors import KerasDigitsError

ENV = "TF_CONFIG"
TASK_TYPES = ("chief", "worker")
DEFAULT_WORKER_WAIT = 300.0  # seconds a worker waits for the others (--worker-wait)
REPORT_EVERY_S = 5.0  # how often a waiting process says what it waits for
EXIT_TERMINATED = 143  # 128 + SIGTERM, as a shell reports a process SIGTERM ended


def say(text: str) -> None:
    """Print a progress line at once (stdout may be a file, block-buffered)."""
    print(text, flush=True)


class Terminated(KerasDigitsError):
    """SIGTERM arrived: the CLI prints one line and exits 143."""

    exit_code = EXIT_TERMINATED


@dataclass(frozen=True)
class Task:
    """This process's place in the cluster."""

    cluster: dict[str, list[str]]
    type: str
    index: int

    @property
    def address(self) -> str:
        return self.cluster[self.type][self.index]

    @property
    def is_chief(self) -> bool:
        return self.type == "chief" or (self.type == "worker" and self.index == 0 and "chief" not in self.cluster)

    @property
    def num_workers(self) -> int:
        return sum(len(v) for v in self.cluster.values())

    @property
    def rank(self) -> int:
        """0 for the chief, then the workers in order."""
        if self.type == "chief":
            return 0
        return self.index + (1 if "chief" in self.cluster else 0)

    @property
    def name(self) -> str:
        return f"{self.type}:{self.index}"


def _fail(why: str) -> KerasDigitsError:
    return KerasDigitsError(f"{ENV} {why}")


def parse(text: str | None) -> Task:
    """The task a TF_CONFIG value describes; one KerasDigitsError for anything malformed."""
    if not text or not text.strip():
        raise KerasDigitsError(
            f"--strategy multiworker needs the {ENV} environment variable (docs/distributed.md: Multi-worker "
            "training); it is not set"
        )
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise _fail(f"is not valid JSON ({exc})") from None
    if (
        not isinstance(data, dict)
        or not isinstance(data.get("cluster"), dict)
        or not isinstance(data.get("task"), dict)
    ):
        raise _fail('must be a JSON object with "cluster" and "task" objects')
    cluster = data["cluster"]
    unknown = sorted(set(cluster) - set(TASK_TYPES))
    if unknown:
        raise _fail(
            f"has cluster job(s) {', '.join(map(repr, unknown))}; multi-worker training uses only "
            f"{' and '.join(map(repr, TASK_TYPES))} (no parameter servers or evaluators)"
        )
    for job, addresses in cluster.items():
        if not isinstance(addresses, list) or not addresses or not all(isinstance(a, str) for a in addresses):
            raise _fail(f'cluster "{job}" must be a non-empty list of "host:port" strings')
        for address in addresses:
            host, _, port = address.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise _fail(f'cluster "{job}" entry {address!r} is not "host:port"')
    everything = [a for addresses in cluster.values() for a in addresses]
    repeated = sorted({a for a in everything if everything.count(a) > 1})
    if repeated:
        raise _fail(f"lists {', '.join(repeated)} more than once: each task needs its own host:port")
    if len(cluster.get("chief", [])) > 1:
        raise _fail('cluster "chief" must hold one address')
    task_type, index = data["task"].get("type"), data["task"].get("index")
    if task_type not in TASK_TYPES:
        raise _fail(f"task type {task_type!r} is unknown; use one of {', '.join(map(repr, TASK_TYPES))}")
    if task_type not in cluster:
        raise _fail(f'task type "{task_type}" has no entry in the cluster')
    if not isinstance(index, int) or isinstance(index, bool):
        raise _fail(f'task "index" must be a whole number, got {index!r}')
    if not 0 <= index < len(cluster[task_type]):
        raise _fail(
            f'task index {index!r} is outside cluster "{task_type}" (0..{len(cluster[task_type]) - 1}): '
            "this host is not in the cluster"
        )
    return Task(cluster={k: list(v) for k, v in cluster.items()}, type=task_type, index=index)


def check_this_host(task: Task) -> None:
    """Raise unless this machine can listen on the task's host:port (the address is one of its own and the
    port is free)."""
    host, _, port = task.address.rpartition(":")
    host = host.strip("[]")
    try:
        infos = socket.getaddrinfo(host, int(port), proto=socket.IPPROTO_TCP)
    except socket.gaierror as exc:
        raise _fail(f"task {task.name} names {task.address}, whose host cannot be resolved ({exc.strerror})") from None
    in_use = False
    for family, kind, proto, _, sockaddr in infos:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(sockaddr)
                return
            except OSError as exc:
                in_use = in_use or exc.errno == errno.EADDRINUSE
    if in_use:
        raise _fail(
            f"task {task.name} names {task.address}, but port {port} is in use on this machine (another "
            "worker, or an earlier one still exiting); pick a free port for every task"
        )
    raise _fail(
        f"task {task.name} names {task.address}, which is not an address of this machine: this host is "
        "not in the cluster (set task.index to this machine's entry)"
    )


def task_from_env(check_host: bool = True) -> Task:
    """This process's task from $TF_CONFIG, checked."""
    task = parse(os.environ.get(ENV))
    if check_host:
        check_this_host(task)
    return task


def label(name: str) -> str:
    """'worker 1' for a task name 'worker:1'."""
    return name.replace(":", " ")


def peers(task: Task) -> list[tuple[str, str]]:
    """(label, host:port) of every other task of the cluster."""
    return [
        (job if job == "chief" else f"{job} {i}", address)
        for job in TASK_TYPES
        for i, address in enumerate(task.cluster.get(job, []))
        if (job, i) != (task.type, task.index)
    ]


def reachable(address: str, timeout: float = 1.0) -> bool:
    """Whether host:port accepts a TCP connection now."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def sigterm_raises(doing: str) -> Iterator[None]:
    """Inside, SIGTERM raises Terminated ('stopped by SIGTERM while <doing>'); the handler before comes back after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        raise Terminated(f"stopped by SIGTERM while {doing}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def wait_for(
    targets: Sequence[tuple[str, str]],
    wait_s: float,
    who: str,
    *,
    flag: str = "--worker-wait",
    log: Callable[[str], None] = say,
    every: float = REPORT_EVERY_S,
) -> float:
    """Wait until every (label, host:port) of `targets` accepts TCP connections, saying '<who>: waiting for
    <label> at <host:port> (N s)' every `every` seconds; KerasDigitsError after `wait_s` seconds, Terminated on
    SIGTERM (Ctrl-C raises KeyboardInterrupt as anywhere). Returns the seconds waited."""
    start = time.monotonic()
    missing = list(targets)
    next_report = start
    with sigterm_raises(f"waiting for {', '.join(f'{n} at {a}' for n, a in targets)}"):
        while True:
            missing = [(n, a) for n, a in missing if not reachable(a)]
            waited = time.monotonic() - start
            if not missing:
                return waited
            if waited >= wait_s:
                names = ", ".join(f"{n} at {a}" for n, a in missing)
                raise KerasDigitsError(
                    f"{who}: gave up after {wait_s:g} s waiting for {names} ({flag}); start "
                    "every process of the cluster with the same command, or check the "
                    "addresses"
                )
            if time.monotonic() >= next_report:
                for n, a in missing:
                    log(f"{who}: waiting for {n} at {a} ({waited:.0f} s)")
                next_report += every
            time.sleep(min(0.5, max(0.05, wait_s - waited)))


def wait_for_workers(
    task: Task, wait_s: float, log: Callable[[str], None] = say, every: float = REPORT_EVERY_S
) -> float:
    """Wait for every other task of the cluster (see the module docstring), listening on this task's own
    address meanwhile: TensorFlow's own server listens only once the blocking set-up has begun."""
    host, _, port = task.address.rpartition(":")
    listener = None
    for family, kind, proto, _, sockaddr in socket.getaddrinfo(host.strip("[]"), int(port), proto=socket.IPPROTO_TCP):
        candidate = socket.socket(family, kind, proto)
        try:
            candidate.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            candidate.bind(sockaddr)
            candidate.listen(16)
            listener = candidate
            break
        except OSError:
            candidate.close()
    if listener is None:
        check_this_host(task)  # says why
        raise _fail(f"task {task.name}: cannot listen on {task.address}")
    try:
        return wait_for(peers(task), wait_s, label(task.name), log=log, every=every)
    finally:
        listener.close()  # never accepted: peers' probes are reset, nothing lingers in TIME_WAIT here
