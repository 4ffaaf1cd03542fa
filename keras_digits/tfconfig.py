"""TF_CONFIG, read and checked before TensorFlow sees it: `--strategy multiworker` builds
tf.distribute.MultiWorkerMirroredStrategy from it, and a mistake in it should be one clear line, not
a hang or a gRPC error minutes later.

    TF_CONFIG='{"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": 0}}'

The cluster holds "worker" (and optionally one "chief") entries, each "host:port". The chief is the
"chief" task if there is one, else worker 0: it alone writes the run directory. This process's own
entry must name an address of this machine (checked by binding to it).
"""

from __future__ import annotations

import errno
import json
import os
import socket
from dataclasses import dataclass

from keras_digits.errors import KerasDigitsError

ENV = "TF_CONFIG"
TASK_TYPES = ("chief", "worker")


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
        raise KerasDigitsError(f"--strategy multiworker needs the {ENV} environment variable (README: Multi-worker "
                               "training); it is not set")
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise _fail(f"is not valid JSON ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("cluster"), dict) or not isinstance(data.get("task"), dict):
        raise _fail('must be a JSON object with "cluster" and "task" objects')
    cluster = data["cluster"]
    unknown = sorted(set(cluster) - set(TASK_TYPES))
    if unknown:
        raise _fail(f"has cluster job(s) {', '.join(map(repr, unknown))}; multi-worker training uses only "
                    f"{' and '.join(map(repr, TASK_TYPES))} (no parameter servers or evaluators)")
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
        raise _fail(f'task index {index!r} is outside cluster "{task_type}" (0..{len(cluster[task_type]) - 1}): '
                    "this host is not in the cluster")
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
        raise _fail(f"task {task.name} names {task.address}, but port {port} is in use on this machine (another "
                    "worker, or an earlier one still exiting); pick a free port for every task")
    raise _fail(f"task {task.name} names {task.address}, which is not an address of this machine: this host is "
                "not in the cluster (set task.index to this machine's entry)")


def task_from_env(check_host: bool = True) -> Task:
    """This process's task from $TF_CONFIG, checked."""
    task = parse(os.environ.get(ENV))
    if check_host:
        check_this_host(task)
    return task
