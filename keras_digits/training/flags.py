"""The one table of training flags: every `TrainConfig` field as a command-line flag, with its group,
type, choices and help; defaults are read from `TrainConfig` itself.

train, tune, sweep and experiment all add these flags with `add_train_flags` and read them back with
`given_options` / `config_from_args`, so a new option is one field in config.py plus one entry here,
and every command that trains accepts it. Flags default to "not given" (argparse.SUPPRESS): defaults
< a `--config` file < flags given on the command line.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields
from typing import Any

from keras_digits.config import (
    BALANCES,
    NORMALIZES,
    OPTIMIZERS,
    PRECISE_BN_WORDS,
    PRECISIONS,
    SCHEDULES,
    SELECT_ON,
    STRATEGIES,
    TrainConfig,
    load_config_file,
)
from keras_digits.errors import KerasDigitsError
from keras_digits.runtime.tfconfig import DEFAULT_WORKER_WAIT
from keras_digits.utils.cli import fraction, non_negative_int, positive_float, positive_int

WHAT, HOW, RUNTIME, FILES = "what to train", "how to train", "runtime", "files"


def _json_object(text: str) -> dict:
    """argparse type: a JSON object."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object, e.g. '{\"batch_norm\": false}'")
    return value


def _augment_help() -> str:
    from keras_digits.data.augment import SPEC_HELP

    return SPEC_HELP


@dataclass(frozen=True)
class Flag:
    """One TrainConfig field on the command line (booleans get --name / --no-name)."""

    field: str
    group: str
    help: str | Callable[[], str]
    type: Callable[[str], Any] | None = None
    choices: tuple[str, ...] | None = None
    metavar: str | None = None
    shown: str | None = None  # the default as --help words it, where TrainConfig's value says little

    @property
    def option(self) -> str:
        return "--" + self.field.replace("_", "-")


def _batches_or_auto(text: str) -> int | None:
    """--precise-bn: auto (None), off (0) or a number of batches."""
    word = text.strip().lower()
    if word in PRECISE_BN_WORDS:
        return PRECISE_BN_WORDS[word]
    try:
        return non_negative_int(word)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected auto, off or a number of batches >= 0, got {text!r}") from None


def _names(kind: str) -> str:
    if kind == "arch":
        from keras_digits.models import list_models

        return ", ".join(list_models())
    from keras_digits.data import list_datasets

    return ", ".join(list_datasets())


FLAGS: tuple[Flag, ...] = (
    Flag("arch", WHAT, lambda: f"architecture; one of: {_names('arch')}"),
    Flag("dataset", WHAT, lambda: f"dataset; one of: {_names('dataset')}"),
    Flag(
        "data_dir",
        WHAT,
        "folder holding the dataset's standard file(s)",
        shown="$KERAS_DIGITS_DATA, then the library caches, then a download",
    ),
    Flag(
        "size",
        WHAT,
        "MedMNIST image size to read: 28 (NAME.npz), 64, 128 or 224 (NAME_SIZE.npz, memory-mapped)",
        int,
        choices=(28, 64, 128, 224),
        shown="28",
    ),
    Flag(
        "image_size",
        WHAT,
        "working resolution",
        positive_int,
        shown="the images' own, raised to the arch's default working size",
    ),
    Flag("val_split", WHAT, "validation fraction carved from train where no official split exists", fraction),
    Flag("max_train_samples", WHAT, "stratified training subset (quick runs)", positive_int, shown="all"),
    Flag(
        "model_kwargs",
        WHAT,
        "JSON object of architecture options, e.g. '{\"batch_norm\": false}'",
        _json_object,
        metavar="JSON",
    ),
    Flag("epochs", HOW, "maximum epochs", positive_int),
    Flag("batch_size", HOW, "batch size (per replica)", positive_int),
    Flag("lr", HOW, "learning rate", positive_float),
    Flag("optimizer", HOW, "optimizer", choices=OPTIMIZERS),
    Flag("momentum", HOW, "SGD momentum", float),
    Flag("weight_decay", HOW, "weight decay", float),
    Flag(
        "schedule",
        HOW,
        "learning-rate schedule: step = x0.1 at 50%% and 75%% of the epochs, cosine = per epoch "
        "after --warmup-epochs, onecycle = per step, linear warm-up over 20%% then cosine, plateau = x0.1 when "
        "val loss stalls",
        choices=SCHEDULES,
    ),
    Flag("warmup_epochs", HOW, "cosine warm-up epochs", int),
    Flag("label_smoothing", HOW, "label smoothing of the cross-entropy (0 = none)", float),
    Flag(
        "select_on",
        HOW,
        "validation metric that picks the saved epoch (and early stopping's): accuracy, or "
        "auc = macro one-vs-rest ROC AUC, as the MedMNIST benchmark selects",
        choices=SELECT_ON,
    ),
    Flag("patience", HOW, "early-stopping patience in epochs", int),
    Flag("early_stopping", HOW, "stop when val accuracy stalls"),
    Flag(
        "precise_bn",
        HOW,
        "BatchNorm population statistics recomputed before each validation over this many training batches "
        "(precise BN): auto = min(steps per epoch, ceil(640 / batch size)) batches where the moving averages would "
        "lag the weights "
        "(BatchNorm momentum^steps per epoch > 0.05), off = never, N = N batches; docs/training.md#precise-batchnorm",
        _batches_or_auto,
        metavar="auto|off|N",
        shown="auto",
    ),
    Flag("balance", HOW, "class balancing", choices=BALANCES),
    Flag("augment", HOW, _augment_help),
    Flag("normalize", HOW, "input normalisation", choices=NORMALIZES),
    Flag("weights", HOW, "none | imagenet | PATH (pretrained families)"),
    Flag("freeze_base", HOW, "train the head with the pretrained base frozen"),
    Flag(
        "fine_tune_at",
        HOW,
        "two phases: --epochs with the base frozen, then unfreeze base layers from N on",
        int,
        shown="one phase",
    ),
    Flag("fine_tune_epochs", HOW, "epochs of the second phase", positive_int, shown="as many as --epochs"),
    Flag("fine_tune_lr_factor", HOW, "second-phase learning rate = lr x this", positive_float),
    Flag("seed", RUNTIME, "random seed", int),
    Flag("deterministic", RUNTIME, "TF op determinism: identical metrics for one seed on CPU"),
    Flag(
        "precision",
        RUNTIME,
        "compute precision: bfloat16 = Keras mixed_bfloat16, float16 = mixed_float16 with "
        "loss scaling (GPUs); auto = bfloat16 on CPUs with AMX-BF16 and on GPUs of compute capability >= 8.0, "
        "float16 on 7.x GPUs, float32 elsewhere",
        choices=PRECISIONS,
    ),
    Flag("strategy", RUNTIME, "distribution strategy", choices=STRATEGIES),
    Flag(
        "steps_per_execution",
        RUNTIME,
        "training steps per call into the compiled graph (less Python overhead "
        "per step; callbacks see every Nth batch)",
        positive_int,
    ),
    Flag("jit_compile", RUNTIME, "XLA compilation (slower on CPU)"),
    Flag("evaluate_test", RUNTIME, "score the test split at the end"),
    Flag(
        "verbose",
        RUNTIME,
        "Keras fit verbosity: 0 = silent, 1 = progress bar, 2 = one line per epoch",
        int,
        choices=(0, 1, 2),
        shown="1 on a terminal, 2 when output goes to a file or pipe",
    ),
    Flag(
        "worker_wait",
        RUNTIME,
        "seconds a distributed process (--strategy multiworker, or a tune/sweep/experiment "
        "worker with KERASTUNER_* variables) waits for the others or the chief before giving up",
        positive_float,
        metavar="S",
        shown=f"{DEFAULT_WORKER_WAIT:g}",
    ),
)


def _default_text(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if value is None:
        return "unset"
    if isinstance(value, dict):
        return json.dumps(value)
    return str(value)


def add_train_flags(
    parser: argparse.ArgumentParser, exclude: Iterable[str] = (), config_file: bool = True
) -> dict[str, Any]:
    """Add every TrainConfig flag (less `exclude`) in its group, each showing TrainConfig's default;
    with `config_file`, also --config FILE.json. Returns the argument groups by title."""
    skip = set(exclude)
    defaults = TrainConfig()
    groups = {title: parser.add_argument_group(title) for title in (WHAT, HOW, RUNTIME, FILES)}
    for flag in FLAGS:
        if flag.field in skip:
            continue
        text = flag.help() if callable(flag.help) else flag.help
        text = f"{text} (default: {flag.shown or _default_text(getattr(defaults, flag.field))})"
        g = groups[flag.group]
        if isinstance(getattr(defaults, flag.field), bool):
            g.add_argument(
                flag.option,
                dest=flag.field,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=text,
            )
            continue
        kwargs: dict[str, Any] = {"dest": flag.field, "default": argparse.SUPPRESS, "help": text}
        if flag.type is not None:
            kwargs["type"] = flag.type
        if flag.choices is not None:
            kwargs["choices"] = flag.choices
        if flag.metavar is not None:
            kwargs["metavar"] = flag.metavar
        g.add_argument(flag.option, **kwargs)
    if "precision" not in skip:  # the flag --precision replaced: it meant mixed_float16 where a GPU was
        groups[RUNTIME].add_argument(
            "--mixed-precision",
            dest="precision",
            action="store_const",
            const="auto",
            default=argparse.SUPPRESS,
            help=argparse.SUPPRESS,
        )
    if config_file:
        from keras_digits.recipes import RECIPES, recipes_help

        groups[FILES].add_argument(
            "--recipe",
            default=argparse.SUPPRESS,
            choices=tuple(RECIPES),
            metavar="NAME",
            help=recipes_help() + " (docs/training.md#recipes); --config and flags given win",
        )
        groups[FILES].add_argument(
            "--config",
            default=argparse.SUPPRESS,
            metavar="FILE.json",
            help="JSON file of training options (a run's config.json or a tuner's "
            "best_config.json); flags given on the command line win",
        )
    return groups


def given_options(args: argparse.Namespace) -> dict[str, Any]:
    """The TrainConfig options given (a --recipe's, a --config file's, then the flags'), as a dict."""
    given = vars(args)
    data: dict[str, Any] = {}
    if given.get("recipe"):
        from keras_digits.recipes import recipe_config

        data.update(recipe_config(given["recipe"]))
    if given.get("config"):
        data.update(load_config_file(given["config"]))
    names = {f.name for f in fields(TrainConfig)}
    data.update({k: v for k, v in given.items() if k in names})
    return data


def config_from_args(args: argparse.Namespace, **base: Any) -> TrainConfig:
    """TrainConfig from defaults < `base` < a --config file < flags."""
    data = {**base, **given_options(args)}
    if "model_kwargs" in data and not isinstance(data["model_kwargs"], dict):
        raise KerasDigitsError("--model-kwargs must be a JSON object")
    return TrainConfig.from_dict(data)
