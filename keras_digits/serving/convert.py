"""Writing a model's stock-Keras twin (keras_digits.models.portable) as ONNX, LiteRT or a portable .keras.

ONNX and LiteRT go through Keras 3's own `model.export(format="onnx" | "litert")` (tf2onnx and the
TFLite converter underneath), applied to a small wrapper: uint8 `images` (N, H, W, C) at the model's
input shape in, cast to float32 inside the graph, probabilities out; the same raw pixels the
SavedModel's signature takes, without its in-graph resize (tf2onnx has no ONNX operator for
TensorFlow's antialiased resize, ScaleAndTranslate) and without the digit normalisation (a
tf.map_fn loop of data-dependent crops that neither converter turns into a runnable graph); the
caller does both (keras_digits.predict does). LiteRT is converted with the builtin operators only, so
the plain interpreter runs it (no Flex delegate).
"""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from keras_digits.errors import KerasDigitsError

INPUT_NAME = "images"
OUTPUT_NAME = "probabilities"
DEFAULT_OPSET = 17


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The converters print progress and warnings (tf2onnx's numpy shim, the MLIR converter's C++ notes)
    to stdout/stderr: caught, at the file-descriptor level too, and dropped (a failure raises anyway)."""
    import logging
    import os
    import sys
    import tempfile

    previous = {name: logging.getLogger(name).level for name in ("tf2onnx", "absl")}
    sys.stdout.flush()
    sys.stderr.flush()
    saved = (os.dup(1), os.dup(2))
    with tempfile.TemporaryFile() as sink, warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        for name in previous:
            logging.getLogger(name).setLevel(logging.ERROR)
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            for name, level in previous.items():
                logging.getLogger(name).setLevel(level)


def input_shape(model) -> tuple[int, int, int]:
    return tuple(int(d) for d in model.inputs[0].shape[1:])  # type: ignore[return-value]


def uint8_wrapper(twin):
    """uint8 images in, the twin's probabilities (float32) out."""
    import keras

    inputs = keras.Input(input_shape(twin), dtype="uint8", name=INPUT_NAME)
    outputs = twin(keras.ops.cast(inputs, "float32"))
    return keras.Model(inputs, outputs, name="serving")


def _spec(twin):
    import tensorflow as tf

    return [tf.TensorSpec([None, *input_shape(twin)], tf.uint8, name=INPUT_NAME)]


def write_onnx(twin, path: Path, opset: int = DEFAULT_OPSET, metadata: dict[str, str] | None = None) -> dict:
    """ONNX file at `path` (opset `opset`): input `images` uint8, output `probabilities`; `metadata`
    goes into the model's metadata_props. Returns what the file holds (for export.json)."""
    import onnx

    raw = path.with_name(path.name + ".raw")
    try:
        with _quiet():
            uint8_wrapper(twin).export(
                str(raw), format="onnx", input_signature=_spec(twin), opset_version=opset, verbose=False
            )
        proto = onnx.load(str(raw))
        _rename_output(proto, OUTPUT_NAME)
        del proto.metadata_props[:]
        for key, value in (metadata or {}).items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        proto.producer_name = "keras_digits"
        onnx.checker.check_model(proto)
        onnx.save(proto, str(path))
    except Exception as exc:  # tf2onnx and onnx raise many types for an op they cannot convert or check
        raise KerasDigitsError(f"ONNX export failed: {type(exc).__name__}: {str(exc).strip()[:300]}") from None
    finally:
        raw.unlink(missing_ok=True)
    opsets = {o.domain or "ai.onnx": int(o.version) for o in proto.opset_import}
    return {
        "file": path.name,
        "opset": opsets.get("ai.onnx", opset),
        "opsets": opsets,
        "input": {"name": proto.graph.input[0].name, "dtype": "uint8", "shape": [None, *input_shape(twin)]},
        "output": {"name": OUTPUT_NAME, "dtype": "float32"},
    }


def _rename_output(proto, name: str) -> None:
    old = proto.graph.output[0].name
    if old == name:
        return
    for node in proto.graph.node:
        for i, out in enumerate(node.output):
            if out == old:
                node.output[i] = name
        for i, inp in enumerate(node.input):
            if inp == old:
                node.input[i] = name
    proto.graph.output[0].name = name


def write_litert(
    twin,
    path: Path,
    quantize: str | None = None,
    calibration: Callable[[], Iterator[list[np.ndarray]]] | None = None,
) -> dict:
    """A LiteRT flatbuffer at `path`: float32 (quantize None), dynamic-range (int8 weights, float
    activations) or int8 (weights and activations, ranges from `calibration`, a generator of [uint8
    batch] lists). Input `images` uint8, output float32 probabilities."""
    import tensorflow as tf

    kwargs: dict = {"target_spec": {"supported_ops": [tf.lite.OpsSet.TFLITE_BUILTINS]}}
    if quantize:
        kwargs["optimizations"] = [tf.lite.Optimize.DEFAULT]
    if quantize == "int8":
        if calibration is None:
            raise KerasDigitsError("int8 quantisation needs calibration images")
        kwargs["representative_dataset"] = calibration
        kwargs["target_spec"]["supported_ops"] = [tf.lite.OpsSet.TFLITE_BUILTINS, tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    try:
        with _quiet():
            uint8_wrapper(twin).export(str(path), format="litert", input_signature=_spec(twin), verbose=False, **kwargs)
    except Exception as exc:  # the converter raises many types (ConverterError for an unsupported op)
        path.unlink(missing_ok=True)
        raise KerasDigitsError(f"LiteRT export failed: {type(exc).__name__}: {str(exc).strip()[:300]}") from None
    return {
        "file": path.name,
        "quantization": quantize or "none",
        "operators": "TFLite builtins only (no Flex delegate needed)",
        "input": {"name": INPUT_NAME, "dtype": "uint8", "shape": [None, *input_shape(twin)]},
        "output": {"index": 0, "dtype": "float32"},
    }


def write_keras(twin, path: Path) -> dict:
    """The twin as a .keras file (not compiled: no optimizer or loss); input float32 pixels 0..255."""
    try:
        twin.save(str(path))
    except Exception as exc:  # Keras raises many types for an unsaveable model
        raise KerasDigitsError(f"saving {path.name} failed: {type(exc).__name__}: {exc}") from None
    return {
        "file": path.name,
        "layers": "stock Keras only (keras.saving.load_model opens it without keras_digits)",
        "input": {"name": twin.inputs[0].name, "dtype": "float32 (pixels 0..255)", "shape": [None, *input_shape(twin)]},
        "output": {"dtype": "float32"},
    }


def onnx_metadata(label_names, config: dict) -> dict[str, str]:
    """What an ONNX file carries about itself: label names and the run's dataset and architecture."""
    return {
        "label_names": json.dumps([str(n) for n in label_names]),
        "keras_digits_config": json.dumps(
            {k: config.get(k) for k in ("arch", "dataset", "preprocess") if k in config}, sort_keys=True
        ),
    }
