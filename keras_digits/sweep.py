"""One-factor-at-a-time sweeps, and the run-grid runner and table/figure writer the studies share.

    python -m keras_digits.sweep --arch simple_cnn --dataset mnist --data-dir D \\
        --vary lr=0.001,0.01,0.1 --vary batch_size=16,32,64 --vary epochs=5,10,15,20 --seeds 3 \\
        [--out reports/sweep-NAME] [any keras_digits.train option]

The reports' method: start from one base configuration (the train defaults plus the options given)
and change one factor at a time, each setting trained with several seeds (base seed + i). Every run
is a normal `train_and_evaluate` run directory, OUT/runs/<factor>=<value>-s<seed>; a run whose
metrics.json exists is read back instead of retrained, so an interrupted sweep resumes (a run
directory holding a different configuration is an error, not silently reused). A setting that
equals another one of the grid (the base value of every factor is the base configuration) is
trained once and reported under each factor.

Writes OUT/sweep.md (per setting: seeds, mean ± sd of validation and test accuracy, test macro-F1,
epochs run, training seconds), OUT/sweep.csv (one row per run) and OUT/sweep.png (one panel per
factor: accuracy against value with ±1 sd error bars; log axis for learning rates). Selection is
by validation accuracy only (the best setting of each factor is marked in the table); test
accuracy is reported, never used to choose.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Sequence

from keras_digits.cli import positive_int, run_cli
from keras_digits.config import TrainConfig
from keras_digits.flags import FILES, add_train_flags, config_from_args
from keras_digits.grid import RunResult, Variant, parse_vary, run_grid  # noqa: F401  (the sweep's API)
from keras_digits.grid_report import markdown_table, summarize, write_results  # noqa: F401
from keras_digits.grid_workers import DEFAULT_WORKER_TIMEOUT, grid_role
from keras_digits.io import check_output_dir
from keras_digits.lock import hold


def command_line(prog: str, argv: Sequence[str] | None) -> str:
    """The command that reproduces this invocation."""
    args = list(sys.argv[1:] if argv is None else argv)
    return " ".join(["python -m", prog] + [shlex.quote(a) for a in args])


def describe_config(cfg: TrainConfig, keys: Sequence[str] = ("arch", "dataset", "epochs", "batch_size", "lr",
                                                              "optimizer", "early_stopping", "patience",
                                                              "max_train_samples", "augment", "balance",
                                                              "normalize", "model_kwargs")) -> str:
    """`key` = value list of the base configuration's headline fields."""
    d = cfg.to_dict()
    return ", ".join(f"`{k}={json.dumps(d[k]) if isinstance(d[k], dict) else d[k]}`" for k in keys)


# ---------------------------------------------------------------------------- CLI
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
    """--worker-timeout, for grids spread over workers (README: Sweeps over several workers)."""
    group.add_argument("--worker-timeout", type=float, default=DEFAULT_WORKER_TIMEOUT, metavar="S",
                       help="chief of a grid spread over workers (KERASTUNER_* variables): a worker silent this "
                            f"long is lost and its run goes to another (default: {DEFAULT_WORKER_TIMEOUT:g})")


def build_parser() -> argparse.ArgumentParser:
    """The shared training flags (the base configuration) plus --vary, --seeds, --out."""
    p = argparse.ArgumentParser(
        prog="python -m keras_digits.sweep",
        description="One-factor-at-a-time sweep around a base configuration (the training flags given), each "
                    "setting over several seeds; writes OUT/sweep.md, sweep.csv, sweep.png and the runs.")
    g = p.add_argument_group("sweep")
    g.add_argument("--vary", action="append", required=True, metavar="FIELD=V1,V2,...",
                   help="a config field and its values (repeatable; one factor varies at a time), "
                        "e.g. --vary lr=0.001,0.01,0.1 --vary batch_size=16,32,64")
    g.add_argument("--seeds", type=positive_int, default=1, help="seeds per setting: seed, seed+1, ... (default: 1)")
    add_worker_flag(g)
    groups = add_train_flags(p)
    groups[FILES].add_argument("--out", default=None,
                               help="report folder (default: reports/sweep-<dataset>-<arch>)")
    return p


def quiet_retracing_warnings() -> None:
    """Many short trainings in one process make TensorFlow warn about retracing; that is expected here."""
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    vary, seeds, out = args.vary, args.seeds, args.out
    base = config_from_args(args, verbose=0)
    variants = parse_vary(vary)
    quiet_retracing_warnings()
    out = check_output_dir(Path(out) if out else Path("reports") / f"sweep-{base.dataset}-{base.arch}", "--out")
    if grid_role() == "worker":  # the chief holds the folder and writes the tables
        run_grid(base, variants, seeds, out)
        return 0
    with hold(out, "sweep folder"):
        results = run_grid(base, variants, seeds, out, worker_timeout=args.worker_timeout)
        paths = write_results(out, "sweep", results, title=f"Sweep: {base.arch} on {base.dataset}",
                              intro=f"One factor at a time around the base configuration {describe_config(base)}; "
                                    f"{seeds} seed(s) per setting (seed {base.seed} + i).",
                              command=command_line("keras_digits.sweep", without_worker_flags(argv)), curves=True)
    print(markdown_table(summarize(results)))
    print(f"wrote {paths['md']}, {paths['csv'].name}, {paths['png'].name}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
