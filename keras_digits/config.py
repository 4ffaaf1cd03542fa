"""Frozen configuration dataclasses: every training default lives here, once."""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from keras_digits.errors import KerasDigitsError
from keras_digits.runtime.precision import PRECISIONS
from keras_digits.runtime.tfconfig import DEFAULT_WORKER_WAIT

OPTIMIZERS = ("adam", "sgd", "nadam", "adagrad", "adamw", "rmsprop")
SCHEDULES = ("none", "plateau", "step", "cosine", "onecycle")
BALANCES = ("none", "class_weight", "resample")
NORMALIZES = ("none", "dataset", "imagenet")
STRATEGIES = ("auto", "mirrored", "default", "multiworker")
SELECT_ON = ("accuracy", "auc")  # the validation metric that picks the best epoch


def default_verbose() -> int:
    """Keras fit verbosity when none is given: 1 (a progress bar) on a terminal, else 2 (a line per epoch), so
    a log file gets no carriage-return progress bars."""
    try:
        return 1 if sys.stdout is not None and sys.stdout.isatty() else 2
    except (AttributeError, ValueError):  # a replaced or closed stdout
        return 2


def sized_name(dataset: str, size: int | None) -> str:
    """<dataset>, or <dataset>_<size> for a MedMNIST --size other than 28 (run and tuner project names)."""
    return dataset if size in (None, 28) else f"{dataset}_{size}"


PRECISE_BN_WORDS: dict[str, int | None] = {"auto": None, "off": 0}  # --precise-bn's words (else a number)


@dataclass(frozen=True)
class TrainConfig:
    """Everything one training run needs; written resolved to the run's config.json."""

    arch: str = "simple_cnn"
    dataset: str = "digits"
    data_dir: str | None = None
    epochs: int = 15
    batch_size: int = 32
    lr: float = 1e-3
    optimizer: str = "adam"
    momentum: float = 0.9
    weight_decay: float = 0.0
    patience: int = 5
    seed: int = 42
    val_split: float = 0.1
    image_size: int | None = None
    size: int | None = None  # MedMNIST's published size to read (28, 64, 128, 224); None = 28
    max_train_samples: int | None = None
    schedule: str = "none"
    warmup_epochs: int = 0
    label_smoothing: float = 0.0
    select_on: str = "accuracy"
    balance: str = "none"
    augment: str = "none"
    normalize: str = "none"
    weights: str = "none"
    freeze_base: bool = False
    fine_tune_at: int | None = None
    fine_tune_epochs: int | None = None
    fine_tune_lr_factor: float = 0.1
    deterministic: bool = False
    precision: str = "float32"  # "auto" is resolved before a run records its config.json (docs/speed.md)
    strategy: str = "auto"
    steps_per_execution: int = 1
    jit_compile: bool = False  # XLA on CPU was much slower here (see benchmarks)
    early_stopping: bool = True
    precise_bn: int | None = None  # batches for BatchNorm statistics before validation; None = auto, 0 = off
    evaluate_test: bool = True
    model_kwargs: Mapping[str, Any] = field(default_factory=dict)
    verbose: int = field(default_factory=default_verbose)
    worker_wait: float = DEFAULT_WORKER_WAIT  # seconds a distributed worker waits for the others (--worker-wait)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise KerasDigitsError on values no run could use."""
        self.check_types()
        if self.epochs <= 0:
            raise KerasDigitsError(f"--epochs must be positive, got {self.epochs}")
        if self.batch_size <= 0:
            raise KerasDigitsError(f"--batch-size must be positive, got {self.batch_size}")
        if not self.lr > 0:
            raise KerasDigitsError(f"--lr must be positive, got {self.lr}")
        if not 0 <= self.momentum <= 1:
            raise KerasDigitsError(f"--momentum must be in [0, 1], got {self.momentum}")
        if self.weight_decay < 0:
            raise KerasDigitsError(f"--weight-decay must be >= 0, got {self.weight_decay}")
        if self.warmup_epochs < 0:
            raise KerasDigitsError(f"--warmup-epochs must be >= 0, got {self.warmup_epochs}")
        if self.steps_per_execution <= 0:
            raise KerasDigitsError(f"--steps-per-execution must be positive, got {self.steps_per_execution}")
        if not 0 <= self.label_smoothing < 1:
            raise KerasDigitsError(f"--label-smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.verbose not in (0, 1, 2):
            raise KerasDigitsError(f"--verbose must be 0, 1 or 2, got {self.verbose}")
        if not self.worker_wait > 0:
            raise KerasDigitsError(f"--worker-wait must be positive, got {self.worker_wait}")
        if self.fine_tune_at is not None and self.fine_tune_at < 0:
            raise KerasDigitsError(f"--fine-tune-at must be >= 0, got {self.fine_tune_at}")
        if self.fine_tune_epochs is not None and self.fine_tune_epochs <= 0:
            raise KerasDigitsError(f"--fine-tune-epochs must be positive, got {self.fine_tune_epochs}")
        if self.precise_bn is not None and self.precise_bn < 0:
            raise KerasDigitsError(f"--precise-bn must be auto, off or a number of batches >= 0, got {self.precise_bn}")
        if self.patience < 0:
            raise KerasDigitsError(f"--patience must be >= 0, got {self.patience}")
        if not 0 <= self.val_split < 1:
            raise KerasDigitsError(f"--val-split must be in [0, 1), got {self.val_split}")
        if self.image_size is not None and self.image_size <= 0:
            raise KerasDigitsError(f"--image-size must be positive, got {self.image_size}")
        if self.size is not None and self.size not in (28, 64, 128, 224):
            raise KerasDigitsError(f"--size must be one of 28, 64, 128, 224, got {self.size}")
        if self.max_train_samples is not None and self.max_train_samples <= 0:
            raise KerasDigitsError(f"--max-train-samples must be positive, got {self.max_train_samples}")
        for name, value, allowed in (
            ("optimizer", self.optimizer, OPTIMIZERS),
            ("schedule", self.schedule, SCHEDULES),
            ("balance", self.balance, BALANCES),
            ("normalize", self.normalize, NORMALIZES),
            ("strategy", self.strategy, STRATEGIES),
            ("precision", self.precision, PRECISIONS),
            ("select_on", self.select_on, SELECT_ON),
        ):
            if value not in allowed:
                raise KerasDigitsError(f"unknown {name} {value!r}; choose one of: {', '.join(allowed)}")

    def check_types(self) -> None:
        """Each field holds its declared type: a whole number for int fields (not a bool, not 2.7), a
        finite number for float fields, true/false for flags, a string or a JSON object where declared."""
        for f in fields(self):
            value, declared = getattr(self, f.name), str(f.type)
            optional = "None" in declared
            if value is None:
                if not optional:
                    raise KerasDigitsError(f"config key {f.name!r} must not be null")
                continue
            kind = next(k for k in ("Mapping", "bool", "int", "float", "str") if k in declared)
            ok = {
                "bool": isinstance(value, bool),
                "int": isinstance(value, int) and not isinstance(value, bool),
                "float": isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value),
                "str": isinstance(value, str),
                "Mapping": isinstance(value, Mapping),
            }[kind]
            if not ok:
                wanted = {
                    "bool": "true or false",
                    "int": "a whole number",
                    "float": "a finite number",
                    "str": "a string",
                    "Mapping": "a JSON object",
                }[kind]
                raise KerasDigitsError(
                    f"config key {f.name!r} (--{f.name.replace('_', '-')}) must be {wanted}"
                    f"{' or null' if optional else ''}, "
                    f"got {value!r} ({type(value).__name__})"
                )

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some fields changed (validated)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON dict of every field."""
        out = dataclasses.asdict(self)
        out["model_kwargs"] = dict(self.model_kwargs)
        return out

    @classmethod
    def field_names(cls) -> set[str]:
        """Names of every option."""
        return {f.name for f in fields(cls)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        """Build from a mapping; unknown keys are a user error."""
        data = known_keys(data)
        if isinstance(data.get("precise_bn"), str):  # a config file may say what the flag says
            word = data["precise_bn"].strip().lower()
            if word in PRECISE_BN_WORDS:
                data = {**data, "precise_bn": PRECISE_BN_WORDS[word]}
        try:
            return cls(**data)
        except TypeError as exc:
            raise KerasDigitsError(f"bad config: {exc}") from None


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a JSON config file (a resolved config.json or a tuner's best_config.json)."""
    path = Path(path)
    if not path.is_file():
        raise KerasDigitsError(f"config file not found: {path}")
    from keras_digits.utils.io import read_json_object

    return known_keys(read_json_object(path, "config file"), f"config file {path}: ")


def known_keys(data: Mapping[str, Any], where: str = "") -> dict[str, Any]:
    """`data` with dashes in keys read as underscores; a key that is no TrainConfig field is an error."""
    data = renamed_keys(data)
    unknown = sorted(set(data) - TrainConfig.field_names())
    if unknown:
        raise KerasDigitsError(
            f"{where}unknown config key(s) {', '.join(unknown)}; known: {', '.join(sorted(TrainConfig.field_names()))}"
        )
    return data


def renamed_keys(data: Mapping[str, Any]) -> dict[str, Any]:
    """`data` with dashes in keys read as underscores and renamed options under their new name:
    `mixed_precision` (before --precision; true meant mixed_float16 on a GPU, float32 on a CPU)."""
    data = {k.replace("-", "_"): v for k, v in data.items()}
    if "mixed_precision" in data:
        legacy = data.pop("mixed_precision")
        data.setdefault("precision", "auto" if legacy else "float32")
    return data


def comparable(cfg_dict: Mapping[str, Any]) -> dict[str, Any]:
    """A config dict as compared between runs: verbosity and --worker-wait aside, tuples as the lists JSON reads
    back, options a run recorded before they existed at their defaults, `precision: auto` as this machine
    resolves it."""
    import json

    d = {**TrainConfig().to_dict(), **renamed_keys(cfg_dict)}  # options added later read as their defaults
    d.pop("verbose", None)
    d.pop("worker_wait", None)  # how long workers wait for each other, not what they train
    if d.get("precision", "auto") == "auto":  # a run records what auto chose on its machine
        from keras_digits.runtime.precision import resolve

        d["precision"] = resolve("auto").name
    return json.loads(json.dumps(d))
