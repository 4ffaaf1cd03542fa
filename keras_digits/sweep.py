"""One-factor-at-a-time sweeps (the grid runner and its tables live in keras_digits.studies).

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
import sys
from collections.abc import Sequence
from pathlib import Path

from keras_digits.studies.grid import parse_vary, run_grid
from keras_digits.studies.report import markdown_table, summarize, write_results
from keras_digits.studies.sweep import (
    add_worker_flag,
    command_line,
    describe_config,
    without_worker_flags,
)
from keras_digits.studies.workers import grid_role
from keras_digits.training.flags import FILES, add_train_flags, config_from_args
from keras_digits.utils.cli import positive_int, quiet_retracing_warnings, run_cli
from keras_digits.utils.io import check_output_dir
from keras_digits.utils.lock import hold


def build_parser() -> argparse.ArgumentParser:
    """The shared training flags (the base configuration) plus --vary, --seeds, --out."""
    p = argparse.ArgumentParser(
        prog="python -m keras_digits.sweep",
        description="One-factor-at-a-time sweep around a base configuration (the training flags given), each "
        "setting over several seeds; writes OUT/sweep.md, sweep.csv, sweep.png and the runs.",
    )
    g = p.add_argument_group("sweep")
    g.add_argument(
        "--vary",
        action="append",
        required=True,
        metavar="FIELD=V1,V2,...",
        help="a config field and its values (repeatable; one factor varies at a time), "
        "e.g. --vary lr=0.001,0.01,0.1 --vary batch_size=16,32,64",
    )
    g.add_argument("--seeds", type=positive_int, default=1, help="seeds per setting: seed, seed+1, ... (default: 1)")
    add_worker_flag(g)
    groups = add_train_flags(p)
    groups[FILES].add_argument("--out", default=None, help="report folder (default: reports/sweep-<dataset>-<arch>)")
    return p


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
        paths = write_results(
            out,
            "sweep",
            results,
            title=f"Sweep: {base.arch} on {base.dataset}",
            intro=f"One factor at a time around the base configuration {describe_config(base)}; "
            f"{seeds} seed(s) per setting (seed {base.seed} + i).",
            command=command_line("keras_digits.sweep", without_worker_flags(argv)),
            curves=True,
        )
    print(markdown_table(summarize(results)))
    print(f"wrote {paths['md']}, {paths['csv'].name}, {paths['png'].name}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
