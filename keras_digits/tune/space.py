"""What a search searches: the fit-time settings, each arch's declared space (or a generic one), and
`--fixed` pins; `trial_config` turns a trial's hyperparameters into a TrainConfig.

The arch's options come from the space it declares with `@register_search_space(name)` next to its
builder (hp -> builder kwargs, named `model/<name>`; the tuner holds no copy of any architecture);
an arch that declares none gets `generic_space`: width (default and half), dropout and batch_norm
where its builder takes them. KerasTuner is imported only where a HyperParameters object is made.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from keras_digits.config import BALANCES, TrainConfig
from keras_digits.data.augment import AUGMENTS
from keras_digits.errors import KerasDigitsError
from keras_digits.models.registry import kind_matches


def fit_space(hp) -> dict[str, Any]:
    """Fit-time settings (TrainConfig fields); defaults are TrainConfig's defaults."""
    d = TrainConfig()
    return {
        "batch_size": hp.Choice("batch_size", [32, 64, 128], default=d.batch_size),
        "optimizer": hp.Choice("optimizer", ["adam", "sgd", "rmsprop", "adamw"], default=d.optimizer),
        "lr": hp.Float("lr", 1e-4, 1e-2, sampling="log", default=d.lr),
        "schedule": hp.Choice("schedule", ["none", "cosine", "plateau"], default=d.schedule),
        "augment": hp.Choice("augment", list(AUGMENTS), default=d.augment),
        "balance": hp.Choice("balance", list(BALANCES), default=d.balance),
    }


def generic_space(arch: str) -> Callable[[Any], dict[str, Any]]:
    """A space for archs that declare none: width (default and half), dropout, batch_norm if taken."""
    import inspect

    from keras_digits.models import model_info

    params = inspect.signature(model_info(arch).builder).parameters

    def default(name: str) -> Any:
        p = params.get(name)
        return None if p is None or p.kind != p.KEYWORD_ONLY else p.default

    def space(hp) -> dict[str, Any]:
        out: dict[str, Any] = {}
        width = default("width")
        if isinstance(width, (int, float)) and not isinstance(width, bool) and width > 0:
            half = width // 2 if isinstance(width, int) else width / 2
            if half:
                out["width"] = hp.Choice("width", sorted({half, width}), default=width)
        dropout = default("dropout")
        if isinstance(dropout, bool):
            out["dropout"] = hp.Boolean("dropout", default=dropout)
        elif isinstance(dropout, (int, float)):
            out["dropout"] = hp.Choice("dropout", sorted({0.0, 0.25, 0.5, float(dropout)}), default=float(dropout))
        batch_norm = default("batch_norm")
        if isinstance(batch_norm, bool):
            out["batch_norm"] = hp.Boolean("batch_norm", default=batch_norm)
        return out

    return space


def search_space(arch: str) -> Callable[[Any], dict[str, Any]]:
    """The arch's declared search space, else the generic one."""
    from keras_digits.models import model_info

    return model_info(arch).search_space or generic_space(arch)


def trial_config(base: TrainConfig, hp, space: Callable | None = None, epochs: int | None = None) -> TrainConfig:
    """Declare every hyperparameter on `hp` (or read its values) and return the trial's TrainConfig."""
    space = space or search_space(base.arch)
    fit = fit_space(hp)
    with hp.name_scope("model"):
        arch_kwargs = dict(space(hp))
    arch_kwargs = {k: list(v) if isinstance(v, tuple) else v for k, v in arch_kwargs.items()}
    return base.replace(
        **fit, model_kwargs={**dict(base.model_kwargs), **arch_kwargs}, epochs=int(epochs or base.epochs)
    )


def parse_fixed(items: Sequence[str]) -> dict[str, Any]:
    """--fixed NAME=VALUE pairs (VALUE as JSON when it parses, else a string)."""
    out: dict[str, Any] = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or not name:
            raise KerasDigitsError(f"--fixed expects NAME=VALUE, got {item!r}")
        try:
            out[name] = json.loads(text)
        except json.JSONDecodeError:
            out[name] = text
    return out


def check_fixed(base: TrainConfig, fixed: dict[str, Any]) -> None:
    """Every --fixed name must be a hyperparameter of this search."""
    import keras_tuner as kt

    hp = kt.HyperParameters()
    trial_config(base, hp)
    unknown = sorted(set(fixed) - set(hp.values))
    if unknown:
        raise KerasDigitsError(
            f"--fixed: no hyperparameter {', '.join(unknown)} in this search; known: {', '.join(hp.values)}"
        )
    for name, value in fixed.items():
        ok, wanted = kind_matches(hp.values[name], value)
        if not ok:
            raise KerasDigitsError(f"--fixed {name}: must be {wanted}, got {value!r}")
