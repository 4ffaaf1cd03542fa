"""The studies of the course's reports as grids of runs: each a list of variants."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from keras_digits.config import TrainConfig
from keras_digits.errors import KerasDigitsError
from keras_digits.studies.grid import Variant, run_grid
from keras_digits.studies.report import summarize, write_results
from keras_digits.studies.sweep import (
    describe_config,
)
from keras_digits.utils.io import check_output_dir
from keras_digits.utils.lock import hold

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
    return [
        _v("alexnet", "no BN", model_kwargs={**small, "batch_norm": False}),
        _v("alexnet", "BN", model_kwargs={**small, "batch_norm": True}),
    ]


def _ablation(quick: bool) -> list[Variant]:
    return [
        _v("simple_cnn", name, model_kwargs={"batch_norm": bn, "dropout": do})
        for name, bn, do in (
            ("BN + dropout", True, True),
            ("dropout only", False, True),
            ("BN only", True, False),
            ("neither", False, False),
        )
    ]


def _optimizers(quick: bool) -> list[Variant]:
    return [
        _v("optimizer", "SGD (momentum 0.9)", optimizer="sgd", lr=0.01, momentum=0.9),
        _v("optimizer", "Adam", optimizer="adam", lr=1e-3),
        _v("optimizer", "NAdam", optimizer="nadam", lr=1e-3),
        _v("optimizer", "Adagrad", optimizer="adagrad", lr=1e-3),
        _v("optimizer", "AdamW", optimizer="adamw", lr=1e-3, weight_decay=1e-4),
    ]


def _lr_batch_epochs(quick: bool) -> list[Variant]:
    grid = (
        {"lr": (0.001, 0.1), "batch_size": (32, 64), "epochs": (1, 2)}
        if quick
        else {"lr": (0.001, 0.01, 0.1), "batch_size": (16, 32, 64), "epochs": (5, 10, 15, 20)}
    )
    return [Variant(k, f"{v:g}", {k: v}, float(v)) for k, values in grid.items() for v in values]


def _cifar_lab(quick: bool) -> list[Variant]:
    resnet = {"width": 8, "depth": 1} if quick else {}
    return [
        _v("model", "dense", arch="dense"),
        _v("model", "cifar_cnn", arch="cifar_cnn"),
        _v("model", "cifar_cnn + dropout", arch="cifar_cnn", model_kwargs={"dropout": True}),
        _v("model", "cifar_cnn + BN", arch="cifar_cnn", model_kwargs={"batch_norm": True}),
        _v("model", "resnet_cifar", arch="resnet_cifar", model_kwargs=resnet),
    ]


def _skew(bundle, ratio: float = SKEW_RATIO):
    from keras_digits.data.balance import skew_training_split

    return skew_training_split(bundle, ratio=ratio, seed=0)


EXPERIMENTS: dict[str, Experiment] = {
    e.name: e
    for e in (
        Experiment(
            "balancing",
            "Class balancing on a long-tailed training set",
            "Balanced MNIST leaves nothing to balance, so the training split is cut to a long tail first: class c "
            f"keeps {SKEW_RATIO:g}**(-c/(K-1)) of the largest class's count (class 0 all of it, "
            f"class 9 1/{SKEW_RATIO:g}; "
            "a seeded random choice, the same for every run). Validation and test are untouched and balanced, so "
            "their accuracy rewards every class alike. Compared: no balancing, inverse-frequency class weights "
            "(mean 1) and class-balanced resampled batches, each with and without early stopping.",
            "mnist",
            {"arch": "simple_cnn", "epochs": 15, "patience": 3},
            _balancing,
            transform_data=_skew,
            quick_base={"max_train_samples": 400},
        ),
        Experiment(
            "augmentation",
            "Data augmentation",
            "Training-batch augmentation with the dataset-safe presets of keras_digits.data.augment (digits: small "
            "rotations, shifts and zooms, never flips; light = every op with probability 0.1, the reports' "
            "setting; strong = 0.3-0.5 and larger magnitudes). Validation and test are never augmented.",
            "mnist",
            {"arch": "simple_cnn", "epochs": 15},
            _augmentation,
        ),
        Experiment(
            "batchnorm",
            "Batch normalisation in AlexNet",
            "AlexNet (keras_digits.models.alexnet: 5x5/2 stem below 128 px, working size 64 px) without and with "
            "BatchNormalization after each of its five convolutions, otherwise identical. Quick mode uses width "
            "0.125 and 32 px images.",
            "mnist",
            {"arch": "alexnet", "epochs": 10, "max_train_samples": 20000},
            _batchnorm,
            quick_base={"image_size": 32},
        ),
        Experiment(
            "simple_cnn_ablation",
            "simple_cnn ablation: batch normalisation and dropout",
            "simple_cnn (3 conv blocks + dense 256) with BatchNormalization and dropout, dropout only, BN only, "
            "and neither.",
            "mnist",
            {"arch": "simple_cnn", "epochs": 15},
            _ablation,
        ),
        Experiment(
            "optimizers",
            "Optimizers",
            "The same simple_cnn trained with each optimizer at its usual learning rate (Keras defaults: SGD 0.01 "
            "with momentum 0.9; Adam, NAdam, Adagrad and AdamW 0.001; AdamW weight decay 1e-4).",
            "mnist",
            {"arch": "simple_cnn", "epochs": 15},
            _optimizers,
        ),
        Experiment(
            "lr_batch_epochs",
            "Learning rate, batch size and epochs (the MNIST table)",
            "One factor at a time around lr 0.001, batch 32, 15 epochs (Adam), early stopping off so that "
            "'epochs' means epochs; the setting equal to the base configuration is trained once and shown under "
            "each factor.",
            "mnist",
            {"arch": "simple_cnn", "epochs": 15, "early_stopping": False},
            _lr_batch_epochs,
        ),
        Experiment(
            "cifar_lab",
            "CIFAR-10 lab: dense vs CNN, dropout, batch normalisation, ResNet",
            "The TBMI26 lab's questions on CIFAR-10: the fully connected baseline, the lab CNN (cifar_cnn, ~37k "
            "parameters), the CNN with dropout, with BatchNormalization, and a ResNet-20-style residual net "
            "(resnet_cifar; quick mode: width 8, one block per stage).",
            "cifar10",
            {"epochs": 20, "batch_size": 64, "patience": 5},
            _cifar_lab,
        ),
    )
}


def experiment_config(exp: Experiment, *, quick: bool = False, **overrides: Any) -> TrainConfig:
    """The experiment's base config: train defaults < experiment < quick < command-line overrides."""
    data: dict[str, Any] = {"dataset": exp.dataset, "verbose": 0, **exp.base}
    if quick:
        data.update(QUICK)
        data.update(exp.quick_base)
    data.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig.from_dict(data)


def run_experiment(
    name: str,
    out: str | Path | None = None,
    *,
    quick: bool = False,
    seeds: int | None = None,
    command: str | None = None,
    log: Callable[[str], None] = print,
    worker_timeout: float | None = None,
    **overrides: Any,
) -> dict | None:
    """Run (or resume) one experiment and write its report; returns the written paths and summary (None in
    a worker of a grid spread over workers: the chief writes the report)."""
    if name not in EXPERIMENTS:
        raise KerasDigitsError(f"unknown experiment {name!r}; choose one of: {', '.join(EXPERIMENTS)}")
    exp = EXPERIMENTS[name]
    base = experiment_config(exp, quick=quick, **overrides)
    n_seeds = seeds or (1 if quick else exp.seeds)
    out = check_output_dir(Path(out) if out else Path("reports") / name, "--out")
    variants = exp.variants(quick)
    varied = sorted(
        {k for v in variants for k in v.changes if k != "model_kwargs"}
        & set(k for k, v in overrides.items() if v is not None)
    )
    if varied:
        print(
            f"note: the {name} study sets {', '.join('--' + k.replace('_', '-') for k in varied)} in its own "
            "settings; the value given is overridden there",
            file=sys.stderr,
        )
    intro = (
        f"{exp.about}\n\nBase configuration: {describe_config(base)}; {n_seeds} seed(s) per setting "
        f"(seed {base.seed} + i)."
        + (
            "\n\n**Quick mode**: a smoke-sized run (small subset, few epochs, one seed); not for conclusions."
            if quick
            else ""
        )
    )
    from keras_digits.studies.workers import grid_role

    if grid_role() == "worker":
        run_grid(base, variants, n_seeds, out, transform_data=exp.transform_data, log=log)
        return None
    with hold(out, "experiment folder"):
        results = run_grid(
            base, variants, n_seeds, out, transform_data=exp.transform_data, log=log, worker_timeout=worker_timeout
        )
        paths = write_results(out, name, results, title=exp.title, intro=intro, command=command, curves=True)
    return {"paths": paths, "summary": summarize(results), "results": results, "base": base}
