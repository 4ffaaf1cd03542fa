"""One-factor sweeps: the recorded command line and the worker flags of a grid."""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Sequence

from keras_digits.config import TrainConfig
from keras_digits.studies.workers import DEFAULT_WORKER_TIMEOUT


def command_line(prog: str, argv: Sequence[str] | None) -> str:
    """The command that reproduces this invocation."""
    args = list(sys.argv[1:] if argv is None else argv)
    return " ".join(["python -m", prog] + [shlex.quote(a) for a in args])


def describe_config(
    cfg: TrainConfig,
    keys: Sequence[str] = (
        "arch",
        "dataset",
        "epochs",
        "batch_size",
        "lr",
        "optimizer",
        "early_stopping",
        "patience",
        "max_train_samples",
        "augment",
        "balance",
        "normalize",
        "model_kwargs",
    ),
) -> str:
    """`key` = value list of the base configuration's headline fields."""
    d = cfg.to_dict()
    return ", ".join(f"`{k}={json.dumps(d[k]) if isinstance(d[k], dict) else d[k]}`" for k in keys)


def without_worker_flags(argv: Sequence[str] | None) -> list[str]:
    """The command's arguments less --worker-timeout and --worker-wait (how a grid was spread, not what it is)."""
    args = list(sys.argv[1:] if argv is None else argv)
    flags = ("--worker-timeout", "--worker-wait")
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
        elif a in flags:
            skip = True
        elif not a.startswith(tuple(f"{f}=" for f in flags)):
            out.append(a)
    return out


def add_worker_flag(group) -> None:
    """--worker-timeout, for grids spread over workers (docs/distributed.md)."""
    group.add_argument(
        "--worker-timeout",
        type=float,
        default=DEFAULT_WORKER_TIMEOUT,
        metavar="S",
        help="chief of a grid spread over workers (KERASTUNER_* variables): a worker silent this "
        f"long is lost and its run goes to another (default: {DEFAULT_WORKER_TIMEOUT:g})",
    )
