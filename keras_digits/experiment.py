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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from keras_digits.cli import positive_int, run_cli
from keras_digits.config import TrainConfig
from keras_digits.errors import KerasDigitsError
from keras_digits.flags import FILES, add_train_flags, given_options
from keras_digits.io import check_output_dir
from keras_digits.lock import hold
from keras_digits.grid import Variant, run_grid
from keras_digits.grid_report import markdown_table, summarize, write_results
from keras_digits.sweep import (
    add_worker_flag,
    command_line,
    describe_config,
    quiet_retracing_warnings,
    without_worker_flags,
)

SKEW_RATIO = 20.0
QUICK = {"max_train_samples": 300, "epochs": 1, "batch_size": 32, "patience": 1}


@dataclass(frozen=True)
class Experiment:
    """A named study: base config, the settings it compares, its defaults and its quick variant."""

    name: str
    title: str
    about: str
    dataset: str
    base: dict[str, Any]
    variants: Callable[[bool], list[Variant]]  # quick -> variants
    seeds: int = 3
    quick_base: dict[str, Any] = field(default_factory=dict)  # on top of QUICK
    transform_data: Callable | None = None


def _v(factor: str, value: str, **changes: Any) -> Variant:
    return Variant(factor, value, changes)


def _balancing(quick: bool) -> list[Variant]:
    out = []
    for stop, label in ((True, "early stopping"), (False, "no early stopping")):
        for mode in ("none", "class_weight", "resample"):
            out.append(_v(label, mode, balance=mode, early_stopping=stop))
    return out


def _augmentation(quick: bool) -> list[Variant]:
    return [_v("augment", a, augment=a) for a in ("none", "light", "strong")]


def _batchnorm(quick: bool) -> list[Variant]:
    small = {"width": 0.125, "dense_units": 256} if quick else {}
    return [_v("alexnet", "no BN", model_kwargs={**small, "batch_norm": False}),
            _v("alexnet", "BN", model_kwargs={**small, "batch_norm": True})]


def _ablation(quick: bool) -> list[Variant]:
    return [_v("simple_cnn", name, model_kwargs={"batch_norm": bn, "dropout": do})
            for name, bn, do in (("BN + dropout", True, True), ("dropout only", False, True),
                                 ("BN only", True, False), ("neither", False, False))]


def _optimizers(quick: bool) -> list[Variant]:
    return [_v("optimizer", "SGD (momentum 0.9)", optimizer="sgd", lr=0.01, momentum=0.9),
            _v("optimizer", "Adam", optimizer="adam", lr=1e-3),
            _v("optimizer", "NAdam", optimizer="nadam", lr=1e-3),
            _v("optimizer", "Adagrad", optimizer="adagrad", lr=1e-3),
            _v("optimizer", "AdamW", optimizer="adamw", lr=1e-3, weight_decay=1e-4)]


def _lr_batch_epochs(quick: bool) -> list[Variant]:
    grid = ({"lr": (0.001, 0.1), "batch_size": (32, 64), "epochs": (1, 2)} if quick else
            {"lr": (0.001, 0.01, 0.1), "batch_size": (16, 32, 64), "epochs": (5, 10, 15, 20)})
    return [Variant(k, f"{v:g}", {k: v}, float(v)) for k, values in grid.items() for v in values]


def _cifar_lab(quick: bool) -> list[Variant]:
    resnet = {"width": 8, "depth": 1} if quick else {}
    return [_v("model", "dense", arch="dense"),
            _v("model", "cifar_cnn", arch="cifar_cnn"),
            _v("model", "cifar_cnn + dropout", arch="cifar_cnn", model_kwargs={"dropout": True}),
            _v("model", "cifar_cnn + BN", arch="cifar_cnn", model_kwargs={"batch_norm": True}),
            _v("model", "resnet_cifar", arch="resnet_cifar", model_kwargs=resnet)]


def _skew(bundle, ratio: float = SKEW_RATIO):
    from keras_digits.data.balance import skew_training_split

    return skew_training_split(bundle, ratio=ratio, seed=0)


EXPERIMENTS: dict[str, Experiment] = {e.name: e for e in (
    Experiment(
        "balancing", "Class balancing on a long-tailed training set",
        "Balanced MNIST leaves nothing to balance, so the training split is cut to a long tail first: class c "
        f"keeps {SKEW_RATIO:g}**(-c/(K-1)) of the largest class's count (class 0 all of it, class 9 1/{SKEW_RATIO:g}; "
        "a seeded random choice, the same for every run). Validation and test are untouched and balanced, so "
        "their accuracy rewards every class alike. Compared: no balancing, inverse-frequency class weights "
        "(mean 1) and class-balanced resampled batches, each with and without early stopping.",
        "mnist", {"arch": "simple_cnn", "epochs": 15, "patience": 3}, _balancing,
        transform_data=_skew, quick_base={"max_train_samples": 400},
    ),
    Experiment(
        "augmentation", "Data augmentation",
        "Training-batch augmentation with the dataset-safe presets of keras_digits.data.augment (digits: small "
        "rotations, shifts and zooms, never flips; light = every op with probability 0.1, the reports' "
        "setting; strong = 0.3-0.5 and larger magnitudes). Validation and test are never augmented.",
        "mnist", {"arch": "simple_cnn", "epochs": 15}, _augmentation,
    ),
    Experiment(
        "batchnorm", "Batch normalisation in AlexNet",
        "AlexNet (keras_digits.models.alexnet: 5x5/2 stem below 128 px, working size 64 px) without and with "
        "BatchNormalization after each of its five convolutions, otherwise identical. Quick mode uses width "
        "0.125 and 32 px images.",
        "mnist", {"arch": "alexnet", "epochs": 10, "max_train_samples": 20000}, _batchnorm,
        quick_base={"image_size": 32},
    ),
    Experiment(
        "simple_cnn_ablation", "simple_cnn ablation: batch normalisation and dropout",
        "simple_cnn (3 conv blocks + dense 256) with BatchNormalization and dropout, dropout only, BN only, "
        "and neither.",
        "mnist", {"arch": "simple_cnn", "epochs": 15}, _ablation,
    ),
    Experiment(
        "optimizers", "Optimizers",
        "The same simple_cnn trained with each optimizer at its usual learning rate (Keras defaults: SGD 0.01 "
        "with momentum 0.9; Adam, NAdam, Adagrad and AdamW 0.001; AdamW weight decay 1e-4).",
        "mnist", {"arch": "simple_cnn", "epochs": 15}, _optimizers,
    ),
    Experiment(
        "lr_batch_epochs", "Learning rate, batch size and epochs (the MNIST table)",
        "One factor at a time around lr 0.001, batch 32, 15 epochs (Adam), early stopping off so that "
        "'epochs' means epochs; the setting equal to the base configuration is trained once and shown under "
        "each factor.",
        "mnist", {"arch": "simple_cnn", "epochs": 15, "early_stopping": False}, _lr_batch_epochs,
    ),
    Experiment(
        "cifar_lab", "CIFAR-10 lab: dense vs CNN, dropout, batch normalisation, ResNet",
        "The TBMI26 lab's questions on CIFAR-10: the fully connected baseline, the lab CNN (cifar_cnn, ~37k "
        "parameters), the CNN with dropout, with BatchNormalization, and a ResNet-20-style residual net "
        "(resnet_cifar; quick mode: width 8, one block per stage).",
        "cifar10", {"epochs": 20, "batch_size": 64, "patience": 5}, _cifar_lab,
    ),
)}


def experiment_config(exp: Experiment, *, quick: bool = False, **overrides: Any) -> TrainConfig:
    """The experiment's base config: train defaults < experiment < quick < command-line overrides."""
    data: dict[str, Any] = {"dataset": exp.dataset, "verbose": 0, **exp.base}
    if quick:
        data.update(QUICK)
        data.update(exp.quick_base)
    data.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig.from_dict(data)


def run_experiment(name: str, out: str | Path | None = None, *, quick: bool = False, seeds: int | None = None,
                   command: str | None = None, log: Callable[[str], None] = print,
                   worker_timeout: float | None = None, **overrides: Any) -> dict | None:
    """Run (or resume) one experiment and write its report; returns the written paths and summary (None in
    a worker of a grid spread over workers: the chief writes the report)."""
    if name not in EXPERIMENTS:
        raise KerasDigitsError(f"unknown experiment {name!r}; choose one of: {', '.join(EXPERIMENTS)}")
    exp = EXPERIMENTS[name]
    base = experiment_config(exp, quick=quick, **overrides)
    n_seeds = seeds or (1 if quick else exp.seeds)
    out = check_output_dir(Path(out) if out else Path("reports") / name, "--out")
    variants = exp.variants(quick)
    varied = sorted({k for v in variants for k in v.changes if k != "model_kwargs"} & set(
        k for k, v in overrides.items() if v is not None))
    if varied:
        print(f"note: the {name} study sets {', '.join('--' + k.replace('_', '-') for k in varied)} in its own "
              "settings; the value given is overridden there", file=sys.stderr)
    intro = (f"{exp.about}\n\nBase configuration: {describe_config(base)}; {n_seeds} seed(s) per setting "
             f"(seed {base.seed} + i)."
             + ("\n\n**Quick mode**: a smoke-sized run (small subset, few epochs, one seed); not for conclusions."
                if quick else ""))
    from keras_digits.grid_workers import grid_role

    if grid_role() == "worker":
        run_grid(base, variants, n_seeds, out, transform_data=exp.transform_data, log=log)
        return None
    with hold(out, "experiment folder"):
        results = run_grid(base, variants, n_seeds, out, transform_data=exp.transform_data, log=log,
                           worker_timeout=worker_timeout)
        paths = write_results(out, name, results, title=exp.title, intro=intro, command=command, curves=True)
    return {"paths": paths, "summary": summarize(results), "results": results, "base": base}


def build_parser() -> argparse.ArgumentParser:
    """The experiment's own options plus the shared training flags (which override its base settings)."""
    lines = "\n".join(f"  {e.name:<20} {e.title} (default dataset {e.dataset})" for e in EXPERIMENTS.values())
    p = argparse.ArgumentParser(
        prog="python -m keras_digits.experiment",
        description="Run one of the reports' experiments and write its table and figures. Training flags "
                    "override the experiment's base settings (its dataset, epochs, arch...; verbosity 0).",
        epilog="experiments:\n" + lines, formatter_class=argparse.RawDescriptionHelpFormatter,
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
    done = run_experiment(args.name, args.out, quick=args.quick, seeds=args.seeds,
                          command=command_line("keras_digits.experiment", without_worker_flags(argv)),
                          worker_timeout=args.worker_timeout,
                          **given_options(args))
    if done is None:
        return 0
    print(markdown_table(done["summary"]))
    print(f"wrote {done['paths']['md']}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
