"""The model registry: `register_model`, `build_model`, `list_models`, `model_info`."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from keras_digits.errors import KerasDigitsError

Builder = Callable[..., Any]  # (input_shape, num_classes, **kwargs) -> keras.Model


@dataclass(frozen=True)
class ModelInfo:
    """A registered architecture and what the rest of the tool needs to know about it."""

    name: str
    builder: Builder
    description: str = ""
    default_size: int | None = None  # working resolution inside the model; None = the input's own
    min_size: int = 1
    channels: int | None = None  # 3: needs RGB (grey inputs are repeated); None: any
    pretrained: bool = False  # accepts --weights imagenet
    search_space: Callable[..., dict[str, Any]] | None = None  # hp -> builder kwargs (tuner)

    def kwargs_accepted(self) -> set[str]:
        """Keyword arguments the builder takes."""
        params = inspect.signature(self.builder).parameters
        return {n for n, p in params.items() if p.kind == p.KEYWORD_ONLY}


_REGISTRY: dict[str, ModelInfo] = {}


def register_model(
    name: str,
    *,
    description: str = "",
    default_size: int | None = None,
    min_size: int = 1,
    channels: int | None = None,
    pretrained: bool = False,
) -> Callable[[Builder], Builder]:
    """Decorator: register `builder(input_shape, num_classes, *, ...) -> keras.Model` under `name`."""

    def wrap(builder: Builder) -> Builder:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} registered twice")
        doc = description or (inspect.getdoc(builder) or "").split("\n")[0]
        _REGISTRY[name] = ModelInfo(name, builder, doc, default_size, min_size, channels, pretrained)
        return builder

    return wrap


def register_search_space(name: str) -> Callable[[Callable[..., dict[str, Any]]], Callable[..., dict[str, Any]]]:
    """Decorator: declare the KerasTuner search space (hp -> builder kwargs) of a registered model."""

    def wrap(fn: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
        info = model_info(name)
        _REGISTRY[name] = ModelInfo(**{**info.__dict__, "search_space": fn})
        return fn

    return wrap


def _ensure_loaded() -> None:
    import keras_digits.models  # noqa: F401  (importing the package registers every family)


def list_models() -> list[str]:
    """Registered model names, sorted."""
    _ensure_loaded()
    return sorted(_REGISTRY)


def model_info(name: str) -> ModelInfo:
    """The registry entry for a name; an unknown name lists the known ones."""
    _ensure_loaded()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KerasDigitsError(f"unknown arch {name!r}; known: {', '.join(sorted(_REGISTRY))}") from None


def resolve_image_size(name: str, input_shape: tuple[int, ...], image_size: int | None = None) -> int:
    """The working resolution for an arch: explicit, else the larger of the arch's default and the input's
    (small images are upscaled to what the arch needs, larger ones, e.g. MedMNIST at 224 px, are kept); checked."""
    info = model_info(name)
    size = image_size or max(info.default_size or 0, int(input_shape[0]))
    if size < info.min_size:
        raise KerasDigitsError(
            f"--image-size {size} is below {name}'s minimum of {info.min_size} pixels; "
            f"use --image-size {info.min_size} or more"
        )
    return size


def kind_matches(default: Any, value: Any) -> tuple[bool, str]:
    """Whether `value` has the type of a builder default, and that type in words."""
    if isinstance(default, bool):
        return isinstance(value, bool), "true or false"
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool), "a whole number"
    if isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        return ok, "a finite number"
    if isinstance(default, str):
        return isinstance(value, str), "a string"
    if isinstance(default, (tuple, list)) and default:
        ok = isinstance(value, (list, tuple)) and len(value) > 0 and all(kind_matches(default[0], v)[0] for v in value)
        return ok, f"a non-empty list of {kind_matches(default[0], default[0])[1].removeprefix('a ')}s"
    return True, "any value"


def check_kwarg_types(info: ModelInfo, kwargs: dict[str, Any]) -> None:
    """Each --model-kwargs value has the type of the builder's default for it ({"batch_norm": "maybe"}
    and {"filters": 2.7} are refused, naming the key and the type wanted)."""
    params = inspect.signature(info.builder).parameters
    for key, value in kwargs.items():
        param = params.get(key)
        if param is None or param.default is inspect.Parameter.empty or param.default is None:
            continue
        ok, wanted = kind_matches(param.default, value)
        if not ok:
            raise KerasDigitsError(
                f"{info.name} option {key!r} must be {wanted}, got {value!r} ({type(value).__name__})"
            )


def build_model(
    name: str,
    input_shape: tuple[int, ...],
    num_classes: int,
    image_size: int | None = None,
    **kwargs: Any,
):
    """Build a registered model that takes raw uint8-range pixels of `input_shape` and outputs softmax."""
    info = model_info(name)
    accepted = info.kwargs_accepted()
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise KerasDigitsError(
            f"{name} does not take option(s) {', '.join(unknown)}; it takes: {', '.join(sorted(accepted)) or 'none'}"
        )
    check_kwarg_types(info, kwargs)
    if num_classes < 2:
        raise KerasDigitsError(f"num_classes must be at least 2, got {num_classes}")
    if len(input_shape) != 3 or input_shape[-1] not in (1, 3):
        raise KerasDigitsError(f"input shape must be (H, W, 1|3), got {tuple(input_shape)}")
    size = resolve_image_size(name, input_shape, image_size)
    if "image_size" in accepted:
        kwargs["image_size"] = size
    try:
        return info.builder(tuple(input_shape), num_classes, **kwargs)
    except (TypeError, ValueError) as exc:  # a bad option value reaching a Keras layer
        shown = {k: v for k, v in kwargs.items() if k != "image_size"}
        raise KerasDigitsError(f"{name}: cannot build with image size {size} and options {shown}: {exc}") from None
