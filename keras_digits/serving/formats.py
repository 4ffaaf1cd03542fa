"""The export formats: names, file names in a version folder, what each needs installed."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable
from pathlib import Path

from keras_digits.errors import KerasDigitsError

FORMATS = ("saved_model", "onnx", "litert", "keras")

FILES = {"onnx": "model.onnx", "litert": "model.tflite", "keras": "model.keras"}

SUFFIXES = {".onnx": "onnx", ".tflite": "litert", ".keras": "keras"}

QUANTIZE = ("dynamic", "int8")

EXTRA = "pip install -e '.[export]' in the keras_digits checkout"

# format -> (module, PyPI name) pairs it needs beyond TensorFlow and Keras: to write it, and to run its check
NEEDS = {
    "onnx": (("tf2onnx", "tf2onnx"), ("onnx", "onnx"), ("onnxruntime", "onnxruntime")),
    "litert": (("ai_edge_litert", "ai-edge-litert"),),
}

# what reads each format when predict or submit is given it
READ_NEEDS = {"onnx": (("onnxruntime", "onnxruntime"),), "litert": (("ai_edge_litert", "ai-edge-litert"),)}


def quantized_file(mode: str) -> str:
    """The LiteRT file of a quantized model: model_dynamic.tflite, model_int8.tflite."""
    return f"model_{mode}.tflite"


def parse_formats(values: Iterable[str]) -> list[str]:
    """--format values (repeated and/or comma-separated, `all` for every format) in FORMATS order."""
    wanted: set[str] = set()
    for value in values:
        for name in (v.strip().lower().replace("-", "_") for v in value.split(",")):
            if not name:
                continue
            if name == "all":
                wanted.update(FORMATS)
            elif name == "tflite":
                wanted.add("litert")
            elif name in FORMATS:
                wanted.add(name)
            else:
                raise KerasDigitsError(f"--format: unknown format {name!r}; choose from {', '.join(FORMATS)} or all")
    if not wanted:
        raise KerasDigitsError("--format: name at least one format")
    return [f for f in FORMATS if f in wanted]


def _missing(needs: Iterable[tuple[str, str]]) -> list[str]:
    return [pypi for module, pypi in needs if importlib.util.find_spec(module) is None]


def require(fmt: str, reading: bool = False) -> None:
    """One clear error naming the extra to install when a package `fmt` needs is missing."""
    missing = _missing((READ_NEEDS if reading else NEEDS).get(fmt, ()))
    if missing:
        verb = "reading" if reading else "exporting"
        raise KerasDigitsError(f"{verb} {fmt} needs {', '.join(missing)}, not installed: {EXTRA}")


def format_of(path: str | Path) -> str:
    """The format of a model path: a folder is a SavedModel; a file by its suffix."""
    path = Path(path)
    if path.is_dir():
        return "saved_model"
    fmt = SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        raise KerasDigitsError(
            f"{path}: not a model (expected a SavedModel folder or a {', '.join(sorted(SUFFIXES))} file)"
        )
    return fmt
