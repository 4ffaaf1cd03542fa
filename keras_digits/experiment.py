"""The reports' experiments, each reproducible from one command:

    python -m keras_digits.experiment NAME [--quick] [--out reports/NAME] [--data-dir D] [--seeds N]
                                           [--dataset X] [--epochs N] [--max-train-samples N]
                                           [--image-size N]
    python -m keras_digits.experiment --list

Each writes OUT/NAME.md (the table: mean ± sd over seeds of validation and test accuracy, test
macro-F1, epochs, seconds), NAME.csv (one row per run), NAME.png (accuracy per setting) and
NAME_curves.png (validation accuracy per epoch), with every run's directory under OUT/runs (reruns
resume: finished runs are read back). Settings are chosen on validation accuracy; test accuracy is
only reported. `--quick` runs a smoke-sized version (a few hundred training images, 1-2 epochs,
one seed, smaller models where the model is big) in about a minute: for tests and CI, not for
conclusions. Each experiment has a default dataset; `--dataset` runs it on another one (the tests
use the embedded `digits`).

Experiments (see EXPERIMENTS for the exact settings):

* balancing: --balance none / class_weight / resample, each with and without early stopping, on a
  long-tailed training subset (class c keeps 20**(-c/9) of the largest class; validation and test
  untouched), since on balanced MNIST there is nothing to balance.
* augmentation: --augment none / light / strong (the dataset-safe presets of keras_digits.data.augment).
* batchnorm: AlexNet without and with BatchNormalization after each conv.
* simple_cnn_ablation: simple_cnn with BN + dropout, dropout only, BN only, neither.
* optimizers: SGD (lr 0.01, momentum 0.9), Adam, NAdam, Adagrad, AdamW (lr 0.001, Keras defaults).
* lr_batch_epochs: the MNIST table, a sweep of lr, batch size and epochs one at a time (no early
  stopping, so the epochs are the epochs).
* cifar_lab: the TBMI26 CIFAR-10 questions: dense baseline vs cifar_cnn vs cifar_cnn + dropout vs
  cifar_cnn + BN vs resnet_cifar.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from keras_digits.studies.experiments import EXPERIMENTS, run_experiment
from keras_digits.studies.report import markdown_table
from keras_digits.studies.sweep import (
    add_worker_flag,
    command_line,
    without_worker_flags,
)
from keras_digits.training.flags import FILES, add_train_flags, given_options
from keras_digits.utils.cli import positive_int, quiet_retracing_warnings, run_cli


def build_parser() -> argparse.ArgumentParser:
    """The experiment's own options plus the shared training flags (which override its base settings)."""
    lines = "\n".join(f"  {e.name:<20} {e.title} (default dataset {e.dataset})" for e in EXPERIMENTS.values())
    p = argparse.ArgumentParser(
        prog="python -m keras_digits.experiment",
        description="Run one of the reports' experiments and write its table and figures. Training flags "
        "override the experiment's base settings (its dataset, epochs, arch...; verbosity 0).",
        epilog="experiments:\n" + lines,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("name", nargs="?", choices=list(EXPERIMENTS), metavar="NAME", help="experiment to run")
    g = p.add_argument_group("experiment")
    g.add_argument("--list", action="store_true", help="list the experiments and exit")
    g.add_argument("--quick", action="store_true", help="smoke-sized: few hundred images, 1-2 epochs, 1 seed")
    g.add_argument("--seeds", type=positive_int, help="seeds per setting (default: 3; 1 with --quick)")
    add_worker_flag(g)
    groups = add_train_flags(p)
    groups[FILES].add_argument("--out", help="report folder (default: reports/NAME)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.list or not args.name:
        for e in EXPERIMENTS.values():
            print(f"{e.name:<20} {e.title} (default dataset {e.dataset}, {e.seeds} seeds)")
        return 0
    quiet_retracing_warnings()
    done = run_experiment(
        args.name,
        args.out,
        quick=args.quick,
        seeds=args.seeds,
        command=command_line("keras_digits.experiment", without_worker_flags(argv)),
        worker_timeout=args.worker_timeout,
        **given_options(args),
    )
    if done is None:
        return 0
    print(markdown_table(done["summary"]))
    print(f"wrote {done['paths']['md']}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
