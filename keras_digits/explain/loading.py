"""Any Keras 3 image classifier as the explainers take it: a keras.Model, a .keras (or legacy .h5) file, or
a TensorFlow SavedModel folder (wrapped with keras.layers.TFSMLayer: its gradients work, its layers are
hidden, so the CAM and modified-backpropagation methods are not available for it)."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np

from keras_digits.errors import KerasDigitsError

FLOAT_TYPES = ("float16", "float32", "float64", "bfloat16")


def load_model(path: str | os.PathLike):
    """(keras.Model, label names or None) from a model file or SavedModel folder; one line when it cannot be used."""
    path = Path(path)
    if not path.exists():
        raise KerasDigitsError(f"model not found: {path}")
    if path.is_dir():
        if (path / "config.json").is_file() and (path / "best.keras").is_file():
            raise KerasDigitsError(f"{path} is a run directory: explain it with --run {path}")
        from keras_digits.serving.model_files import resolve_saved_model

        folder = resolve_saved_model(path)
        return saved_model(folder), _labels(folder / "assets")
    suffix = path.suffix.lower()
    if suffix not in (".keras", ".h5", ".hdf5"):
        raise KerasDigitsError(
            f"{path}: explanations need a Keras model (.keras, .h5) or a SavedModel folder; "
            f"{suffix or 'this file'} is not one (export --format keras writes a .keras)"
        )
    if suffix == ".keras" and not zipfile.is_zipfile(path):
        raise KerasDigitsError(f"{path} is not a Keras model file (corrupt or truncated?)")
    import keras

    import keras_digits.models  # noqa: F401  (registers this package's layers, for its own runs' files)

    try:
        model = keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as exc:  # Keras raises many types for foreign or broken files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise KerasDigitsError(f"cannot load {path}: {type(exc).__name__}: {first[:300]}") from None
    labels = _labels(path.parent / "assets")
    if labels is None and (path.parent / "dataset.json").is_file():  # a run's own best.keras
        from keras_digits.utils.io import read_json_object

        names = read_json_object(path.parent / "dataset.json", lenient=True).get("label_names")
        labels = [str(n) for n in names] if isinstance(names, list) else None
    return model, labels


def _labels(assets: Path) -> list[str] | None:
    from keras_digits.serving.model_files import read_labels

    return read_labels(assets) if assets.is_dir() else None


def _signature(loaded, folder: Path):
    """The serving signature with one float (batch, height, width, channels) input: keras_digits' own float one
    first, then serving_default, then any other."""
    from keras_digits.serving.export import FLOAT_SIGNATURE

    seen = []
    names = sorted(loaded.signatures, key=lambda n: (n != FLOAT_SIGNATURE, n != "serving_default", n))
    for name in names:
        fn = loaded.signatures[name]
        specs = list(fn.structured_input_signature[1].values())
        seen.append(f"{name}: " + ", ".join(f"{s.dtype.name} {s.shape}" for s in specs))
        if len(specs) != 1:
            continue
        spec = specs[0]
        dims = spec.shape.as_list()
        if spec.dtype.name in FLOAT_TYPES and len(dims) == 4 and all(isinstance(d, int) for d in dims[1:]):
            return name, tuple(dims[1:]), spec.dtype.name
    raise KerasDigitsError(
        f"{folder}: no signature takes float images of one size (batch, height, width, channels) to differentiate; "
        f"it has {'; '.join(seen) or 'no signatures'}"
    )


def saved_model(folder: Path):
    """A SavedModel as a one-input keras.Model (its chosen signature behind a TFSMLayer)."""
    import keras
    import tensorflow as tf

    try:
        loaded = tf.saved_model.load(str(folder))
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise KerasDigitsError(f"cannot load the SavedModel {folder}: {type(exc).__name__}: {first[:300]}") from None
    name, shape, dtype = _signature(loaded, folder)
    outputs = loaded.signatures[name].structured_outputs
    keys = [k for k, v in outputs.items() if len(v.shape) == 2 and v.dtype.is_floating]
    if not keys:
        raise KerasDigitsError(f"{folder}: signature {name} has no (batch, classes) float output: {list(outputs)}")
    key = "probabilities" if "probabilities" in keys else keys[0]
    layer = keras.layers.TFSMLayer(str(folder), call_endpoint=name)
    image = keras.Input(shape=shape, dtype=dtype, name="image")
    out = layer(image)
    out = out[key] if isinstance(out, dict) else out
    return keras.Model(image, out, name=folder.name or "saved_model")


def infer_range(x: np.ndarray) -> tuple[float, float]:
    """The input range a batch of images most likely lives in: -1..1, 0..1 or 0..255; anything else (standardised
    inputs, say) must be given."""
    x = np.asarray(x, np.float64)
    lo, hi = (float(x.min()), float(x.max())) if x.size else (0.0, 255.0)
    for low, high in ((0.0, 1.0), (-1.0, 1.0), (0.0, 255.0)):
        if lo >= low and hi <= high:
            return (low, high)
    raise KerasDigitsError(
        f"images span {lo:g}..{hi:g}, not 0..1, -1..1 or 0..255: give value_range=(low, high), the range the "
        "model takes (black, the baseline, is its low end)"
    )
