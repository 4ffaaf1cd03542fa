"""Running an exported model with its own format's runtime: TensorFlow for the SavedModel, onnxruntime
for ONNX, the LiteRT interpreter (ai-edge-litert) for .tflite, plain Keras for the portable .keras.

This module imports nothing from keras_digits, on purpose: `python -m keras_digits.export` runs this very
file's source, followed by a call of `main`, in a fresh Python process (`python -c SOURCE FORMAT MODEL
INPUTS.npz OUTPUTS.npz`, see keras_digits.serving.proof) with the package made unimportable, to prove
each exported file works without the package; `predict` and `submit` use the same classes in-process
for models given as files.

Every runtime takes uint8 images (N, H, W, C) at the model's input shape and returns float32
probabilities (N, classes). The SavedModel's `serving_default` also accepts other sizes and channel
counts (it fits them inside its graph); the file formats do not: the caller fits the images first.
"""

from __future__ import annotations

import importlib.abc
import json
import os
import sys
import time

import numpy as np

BLOCKED_PACKAGE = "keras_digits"

RUNTIME_MODULES = {
    "saved_model": "tensorflow",
    "onnx": "onnxruntime",
    "litert": "ai_edge_litert",
    "keras": "keras",
}


class _Blocker(importlib.abc.MetaPathFinder):
    """Refuses to import one package: the proof that an exported file never needs it."""

    def __init__(self, name: str):
        self.name = name

    def find_spec(self, fullname, path=None, target=None):
        if fullname == self.name or fullname.startswith(self.name + "."):
            raise ImportError(f"{fullname} is blocked: the exported model must run without it")
        return None


def block_package(name: str = BLOCKED_PACKAGE) -> None:
    """Make `name` unimportable in this process."""
    sys.meta_path.insert(0, _Blocker(name))


class _quiet_fd2:
    """Silence file descriptor 2 (C++ log lines) for a block."""

    def __enter__(self):
        sys.stderr.flush()
        self._saved = os.dup(2)
        self._null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(self._null, 2)

    def __exit__(self, *exc):
        os.dup2(self._saved, 2)
        os.close(self._saved)
        os.close(self._null)
        return False


class SavedModelRuntime:
    """tf.saved_model.load + the `serving_default` signature (uint8 images in, `probabilities` out)."""

    kind = "saved_model"

    def __init__(self, path: str, threads: int | None = None):
        import tensorflow as tf

        if threads:
            try:
                tf.config.threading.set_intra_op_parallelism_threads(threads)
            except RuntimeError:  # TensorFlow already started: its thread pools are fixed
                pass
        self._tf = tf
        self._loaded = tf.saved_model.load(path)
        self._fn = self._loaded.signatures["serving_default"]
        self.name, self.version = "tensorflow", tf.__version__
        float_fn = self._loaded.signatures.get("serve_float")
        spec = float_fn.structured_input_signature[1]["images"] if float_fn is not None else None
        self.input_shape = tuple(int(d) for d in spec.shape[1:]) if spec is not None else None

    def run(self, images: np.ndarray) -> np.ndarray:
        out = self._fn(images=self._tf.constant(images, dtype=self._tf.uint8))
        return out["probabilities"].numpy().astype(np.float32)


class OnnxRuntime:
    """onnxruntime.InferenceSession on the CPU; the graph takes uint8 `images`."""

    kind = "onnx"

    def __init__(self, path: str, threads: int | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.log_severity_level = 3
        self._session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        inp = self._session.get_inputs()[0]
        self._input, self._output = inp.name, self._session.get_outputs()[0].name
        self.input_shape = tuple(int(d) if isinstance(d, int) else None for d in inp.shape[1:])
        self.name, self.version = "onnxruntime", ort.__version__
        meta = self._session.get_modelmeta().custom_metadata_map
        self.metadata = dict(meta) if meta else {}

    def run(self, images: np.ndarray) -> np.ndarray:
        return np.asarray(self._session.run([self._output], {self._input: images})[0], dtype=np.float32)


class LiteRTRuntime:
    """The LiteRT interpreter (ai_edge_litert); the batch dimension is resized to each call's."""

    kind = "litert"

    def __init__(self, path: str, threads: int | None = None):
        import ai_edge_litert
        from ai_edge_litert.interpreter import Interpreter

        with _quiet_fd2():  # the interpreter announces its XNNPACK delegate on stderr
            self._interpreter = Interpreter(model_path=path, num_threads=threads or os.cpu_count() or 1)
        self._input = self._interpreter.get_input_details()[0]
        self._output = self._interpreter.get_output_details()[0]
        self._batch = None
        self.input_shape = tuple(int(d) for d in self._input["shape_signature"][1:])
        self.name, self.version = "ai-edge-litert", getattr(ai_edge_litert, "__version__", "?")

    def run(self, images: np.ndarray) -> np.ndarray:
        it = self._interpreter
        if self._batch != len(images):
            it.resize_tensor_input(self._input["index"], [len(images), *self.input_shape])
            it.allocate_tensors()
            self._batch = len(images)
        it.set_tensor(self._input["index"], np.ascontiguousarray(images, dtype=self._input["dtype"]))
        it.invoke()
        out = it.get_tensor(self._output["index"])
        scale, zero = self._output["quantization"]
        if scale:  # an integer output tensor: back to probabilities
            out = (out.astype(np.float32) - zero) * scale
        return np.asarray(out, dtype=np.float32)


class KerasRuntime:
    """keras.saving.load_model (compile=False) + predict_on_batch on float32 pixels 0..255."""

    kind = "keras"

    def __init__(self, path: str, threads: int | None = None):
        import keras

        self._model = keras.saving.load_model(path, compile=False)
        self.input_shape = tuple(int(d) for d in self._model.inputs[0].shape[1:])
        self.name, self.version = "keras", keras.__version__

    def run(self, images: np.ndarray) -> np.ndarray:
        return np.asarray(self._model.predict_on_batch(images.astype(np.float32)), dtype=np.float32)


RUNTIMES = {
    "saved_model": SavedModelRuntime,
    "onnx": OnnxRuntime,
    "litert": LiteRTRuntime,
    "keras": KerasRuntime,
}


def open_runtime(kind: str, path: str, threads: int | None = None):
    """The runtime of format `kind` (see RUNTIMES) holding the model at `path`."""
    return RUNTIMES[kind](str(path), threads)


def predict_all(runtime, images: np.ndarray, batch: int = 64) -> np.ndarray:
    """Probabilities for every image, `batch` at a time."""
    parts = [runtime.run(images[i : i + batch]) for i in range(0, len(images), batch)]
    return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)


def main(argv: list[str]) -> int:
    """FORMAT MODEL INPUTS.npz OUTPUTS.npz [BATCH]: probabilities of INPUTS' `images` into OUTPUTS'
    `probabilities`; prints one JSON line (runtime, version, whether keras_digits / tensorflow were
    imported). keras_digits is blocked first."""
    block_package()
    kind, model, inputs, outputs = argv[:4]
    batch = int(argv[4]) if len(argv) > 4 else 64
    with np.load(inputs, allow_pickle=False) as data:
        images = data["images"]
    start = time.perf_counter()
    runtime = open_runtime(kind, model)
    loaded = time.perf_counter()
    probs = predict_all(runtime, images, batch)
    np.savez(outputs, probabilities=probs)
    report = {
        "runtime": runtime.name,
        "version": runtime.version,
        "images": int(len(images)),
        "load_s": round(loaded - start, 3),
        "predict_s": round(time.perf_counter() - loaded, 3),
        "keras_digits_imported": any(m == BLOCKED_PACKAGE or m.startswith(BLOCKED_PACKAGE + ".") for m in sys.modules),
        "tensorflow_imported": "tensorflow" in sys.modules,
    }
    print(json.dumps(report))
    return 0
