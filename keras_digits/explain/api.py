"""The Python API: explain any Keras 3 image classifier, and score the explanations.

    from keras_digits.explain import explain, evaluate
    maps = explain(model, images, method="gradcam")                  # (N, H, W) float32
    every = explain("model.keras", images, method="all", target=3)  # {method: maps}
    scores = evaluate(model, images, every, metrics="all")            # dict, as explain.json's "metrics"

`model`: a keras.Model (functional or Sequential; nested keras.applications bases are walked through) with
one image input and a softmax or logit head, or a path to a .keras / .h5 file or a SavedModel folder.
`images`: (N, H, W, C), (H, W, C), or (N, H, W) for one channel, in the model's own input units.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

from keras_digits.errors import KerasDigitsError


def _model(model):
    if isinstance(model, (str, bytes)) or hasattr(model, "__fspath__"):
        from keras_digits.explain.loading import load_model

        return load_model(model)[0]
    return model


def _images(images, shape: tuple[int, ...]) -> np.ndarray:
    x = np.asarray(images, np.float32)
    if x.ndim == 3 and x.shape == tuple(shape):
        x = x[None]
    elif x.ndim == 3 and shape[-1] == 1 and x.shape[1:] == tuple(shape[:2]):
        x = x[..., None]
    if x.ndim != 4 or x.shape[1:] != tuple(shape):
        raise KerasDigitsError(f"images of shape {np.shape(images)} do not fit the model's input {tuple(shape)}")
    if not np.isfinite(x).all():
        raise KerasDigitsError("images hold NaN or infinite values")
    return x


def _classes(value, n: int, num_classes: int, what: str, default: np.ndarray) -> np.ndarray:
    if value is None:
        return default
    try:
        out = np.broadcast_to(np.asarray(value, np.int64), (n,)).astype(np.int32)
    except (ValueError, TypeError):
        raise KerasDigitsError(f"{what} must be a class index or one per image ({n}), got {value!r}") from None
    if ((out < 0) | (out >= num_classes)).any():
        raise KerasDigitsError(f"{what} must be classes 0..{num_classes - 1}, got {np.unique(out).tolist()}")
    return out.copy()


def applicable(ex, names: list[str], every: bool) -> tuple[list[str], list[str]]:
    """(the methods `ex` can run, notes on those dropped). Under "all" (`every`), the CAM methods are dropped
    for a model without a spatial feature map, and Guided Backpropagation, DeepLIFT and Guided Grad-CAM for
    one whose activations are hidden (an opaque SavedModel); named alone, they are one error each."""
    from keras_digits.explain import CAM_METHODS
    from keras_digits.explain.modified import activation_layers

    notes = []
    if ex.layer is None and any(m in CAM_METHODS for m in names):
        cams = [m for m in names if m in CAM_METHODS]
        if not every:
            ex.require_layer(cams[0])
        names = [m for m in names if m not in CAM_METHODS]
        notes.append(f"{', '.join(cams)} skipped: {ex.model.name} has no spatial feature map")
    rules = [m for m in names if m in ("guided_backprop", "deeplift", "guided_gradcam")]
    if rules and not activation_layers(ex.model):
        if not every:
            raise KerasDigitsError(
                f"{rules[0]} changes how activations pass gradients back, and {ex.model.name} shows none (a "
                "SavedModel is one opaque layer; load the .keras file instead)"
            )
        names = [m for m in names if m not in rules]
        notes.append(f"{', '.join(rules)} skipped: {ex.model.name} shows no activation layers (an opaque SavedModel)")
    return names, notes


def explainer(model, layer: str | None = None, value_range=None, images=None, **settings):
    """An Explainer for `model` (see `explain` for the arguments); reuse it to explain many batches."""
    from keras_digits.explain.core import Explainer, Options
    from keras_digits.explain.loading import infer_range

    fields = {f.name for f in dataclasses.fields(Options)}
    unknown = sorted(set(settings) - fields)
    if unknown:
        raise KerasDigitsError(f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(fields))}")
    if value_range is None:
        value_range = infer_range(images) if images is not None else (0.0, 255.0)
    return Explainer(_model(model), layer, Options(**settings, value_range=tuple(float(v) for v in value_range)))


def _prepare(model, images, target, contrast, layer, value_range, settings):
    if hasattr(model, "modified_gradients"):  # an Explainer: its own settings hold
        if layer is not None or value_range is not None or settings:
            raise KerasDigitsError(
                "an explainer carries its own layer, value range and settings; pass them to explainer()"
            )
        ex = model
    else:
        ex = explainer(model, layer, value_range, images, **settings)
    x = _images(images, ex.input_shape)
    if not len(x):
        raise KerasDigitsError("no images to explain")
    if x.min() < ex.low - 1e-3 * ex.span or x.max() > ex.high + 1e-3 * ex.span:
        raise KerasDigitsError(
            f"images span {x.min():g}..{x.max():g}, outside the value range {ex.low:g}..{ex.high:g}: give "
            "value_range=(low, high), the range the model takes"
        )
    ex.check_head(x)
    preds = ex.predict(x).argmax(axis=1).astype(np.int32)
    t = _classes(target, len(x), ex.num_classes, "target", preds)
    c = _classes(contrast, len(x), ex.num_classes, "contrast", np.full(len(x), -1, np.int32))
    c = np.where(c == t, -1, c).astype(np.int32)
    return ex, x, t, c


def explain(
    model,
    images,
    method: str | Sequence[str] = "gradcam",
    target=None,
    contrast=None,
    layer: str | None = None,
    value_range: tuple[float, float] | None = None,
    **settings,
):
    """Attribution maps of `images` for `target` (None: each image's predicted class; an int or one per image).

    `method`: a name, a comma-separated list, a sequence, or "all" (methods that need a spatial layer are
    left out of "all" for a model without one). One name gives an (N, H, W) float32 array; several a dict.
    `contrast`: explain target minus this class. `value_range`: the model's input range (default: guessed
    from the images: -1..1, 0..1 or 0..255); black is its low end. `settings`: explain.core.Options
    fields (steps, samples, masks, coalitions, batch_size, background, head, seed, ...).
    `model` may be an Explainer from `explainer()`, to reuse its traced functions."""
    from keras_digits.explain import method_fn, parse_methods

    text = _names_text(method, "method")
    names = parse_methods(text)
    ex, x, t, c = _prepare(model, images, target, contrast, layer, value_range, settings)
    names, _ = applicable(ex, names, any(m.strip().lower() == "all" for m in text.split(",")))
    maps = {name: method_fn(name)(ex, x, t, c) for name in names}
    single = isinstance(method, str) and len(names) == 1 and "," not in method and method.strip().lower() != "all"
    return maps[names[0]] if single else maps


def _names_text(value, what: str) -> str:
    """A name, a comma-separated list or a sequence of names, as one comma-separated string."""
    if isinstance(value, str):
        return value
    if isinstance(value, Sequence) and value and all(isinstance(v, str) for v in value):
        return ",".join(value)
    raise KerasDigitsError(f"{what} must be a name, a comma-separated list or a list of names, got {value!r}")


def evaluate(
    model,
    images,
    maps: dict[str, np.ndarray],
    metrics: str | Sequence[str] = "all",
    target=None,
    contrast=None,
    layer: str | None = None,
    value_range: tuple[float, float] | None = None,
    ground_truth: np.ndarray | None = None,
    sensitivity_n: int = 8,
    **settings,
) -> dict:
    """Score `maps` ({method: (N, H, W)}, e.g. from `explain`) on the same images and targets; `metrics`: "all", a
    name, a comma-separated list or a list of names among the metrics of
    explain.scorecard (deletion/insertion, MuFidelity, ROAD, ink localisation or `ground_truth` (N, H, W)
    masks, complexity, max-sensitivity (re-explains noisy copies of the first `sensitivity_n` images), agreement)."""
    from keras_digits.explain import METHODS, method_fn
    from keras_digits.explain.scorecard import evaluate as score
    from keras_digits.explain.scorecard import parse_metrics

    if not isinstance(maps, Mapping):
        raise KerasDigitsError(
            f"maps must be a dict {{method: (N, H, W) array}}, got {type(maps).__name__} "
            "(explain() with one method name returns a bare array: pass {name: maps})"
        )
    which = parse_metrics(_names_text(metrics, "metrics"))
    ex, x, t, c = _prepare(model, images, target, contrast, layer, value_range, settings)
    for name, m in maps.items():
        if np.shape(m) != (len(x), *x.shape[1:3]):
            raise KerasDigitsError(f"maps[{name!r}] has shape {np.shape(m)}; expected {(len(x), *x.shape[1:3])}")

    def compute(name, xs, ts, cs):
        if name not in METHODS:
            raise KerasDigitsError(f"max-sensitivity re-explains with the method; {name!r} is not one")
        return method_fn(name)(ex, xs, ts, cs)

    return score(
        ex,
        x,
        t,
        c,
        {k: np.asarray(v, np.float32) for k, v in maps.items()},
        which,
        compute,
        seed=int(settings.get("seed", 0)),
        sensitivity_n=sensitivity_n,
        ground_truth=ground_truth,
    )
