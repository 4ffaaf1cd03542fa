"""Models given to predict and submit as files (.onnx, .tflite, .keras): where they are, what labels and
config travel with them, and how images of any size reach them (fitted here, as the SavedModel's own
signature fits them in its graph)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np

from keras_digits.errors import KerasDigitsError
from keras_digits.serving import formats as fmts


def resolve_saved_model(path: Path) -> Path:
    """A SavedModel folder: `path` itself, or its highest numbered version subfolder."""
    if (path / "saved_model.pb").is_file():
        return path
    versions = [p for p in path.iterdir() if p.is_dir() and p.name.isdigit() and (p / "saved_model.pb").is_file()]
    if versions:
        return max(versions, key=lambda p: int(p.name))
    files = sorted(p.name for p in path.iterdir() if p.suffix.lower() in fmts.SUFFIXES)
    if files:
        raise KerasDigitsError(
            f"{path} holds no SavedModel; name one of its model files: " + ", ".join(str(path / f) for f in files)
        )
    raise KerasDigitsError(f"{path} is not a SavedModel folder (no saved_model.pb, no numbered version inside)")


def resolve_model(path: str | os.PathLike) -> tuple[str, Path]:
    """(format, path) of a --model argument: a SavedModel folder (or the folder above its versions), or
    a .onnx / .tflite / .keras file."""
    path = Path(path)
    if not path.exists():
        raise KerasDigitsError(f"model not found: {path}")
    if path.is_dir():
        return "saved_model", resolve_saved_model(path)
    return fmts.format_of(path), path


def assets_dir(fmt: str, path: Path) -> Path:
    """Where an export's assets (labels.txt, config.json, export.json) are: inside a SavedModel folder,
    beside a model file."""
    return (path if fmt == "saved_model" else path.parent) / "assets"


def config_path(fmt: str, path: Path) -> Path:
    """The run config travelling with a model: assets/config.json, or for a run's own best.keras (no
    assets) the run directory's config.json."""
    exported = assets_dir(fmt, path) / "config.json"
    if fmt != "saved_model" and not exported.is_file() and (path.parent / "config.json").is_file():
        return path.parent / "config.json"
    return exported


def read_labels(assets: Path) -> list[str] | None:
    path = assets / "labels.txt"
    if not path.is_file():
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    return text[:-1].split("\n") if text.endswith("\n") else text.split("\n")  # names may hold other separators


class FileModel:
    """A .onnx, .tflite or .keras model behind the same call as the SavedModel signature: uint8 images of
    one size and any channel count in; (probabilities, class ids, labels) out."""

    def __init__(self, fmt: str, path: Path):
        fmts.require(fmt, reading=True)
        from keras_digits.serving.runtimes import open_runtime

        if fmt == "keras":
            import keras_digits.models  # noqa: F401  (a run's own best.keras holds this package's layers)
        try:
            self.runtime = open_runtime(fmt, path)
            shape = tuple(self.runtime.input_shape or ())
            if len(shape) != 3 or any(d is None or d <= 0 for d in shape):
                raise ValueError(f"the model's input must be a fixed (height, width, channels), got {shape}")
            self.input_shape: tuple[int, int, int] = tuple(int(d) for d in shape)  # type: ignore[assignment]
            probe = np.asarray(self.runtime.run(np.zeros((1, *self.input_shape), np.uint8)))  # a uint8 graph?
            if probe.ndim != 2:
                raise ValueError(f"expected probabilities (batch, classes), got shape {probe.shape}")
        except Exception as exc:  # every runtime raises its own types for a broken or foreign file
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise KerasDigitsError(f"cannot use {path} with {fmt}'s runtime: {type(exc).__name__}: {text}") from None
        self.num_classes = int(probe.shape[-1])
        self.label_names = self._labels(fmt, path)

    def _labels(self, fmt: str, path: Path) -> list[str]:
        labels = read_labels(assets_dir(fmt, path))
        if labels is None and (path.parent / "dataset.json").is_file():  # a run's own best.keras
            from keras_digits.utils.io import read_json_object

            names = read_json_object(path.parent / "dataset.json", lenient=True).get("label_names")
            labels = [str(n) for n in names] if isinstance(names, list) else None
        if labels is None and fmt == "onnx":
            try:
                labels = [str(n) for n in json.loads(self.runtime.metadata.get("label_names", "null")) or []] or None
            except ValueError:
                labels = None
        if labels is not None and len(labels) == self.num_classes:
            return labels
        print(
            f"note: no label names found with {path} (assets/labels.txt); labels are the class ids "
            f"0..{self.num_classes - 1}",
            file=sys.stderr,
        )
        return [str(i) for i in range(self.num_classes)]

    def __call__(self, images) -> tuple[np.ndarray, np.ndarray, list[str]]:
        from keras_digits.data.adapt import fit_uint8

        probs = self.runtime.run(fit_uint8(images, self.input_shape))
        ids = probs.argmax(-1).astype(int)
        return probs, ids, [self.label_names[i] for i in ids]
