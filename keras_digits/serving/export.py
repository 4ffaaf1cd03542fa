"""A Keras model as a TensorFlow SavedModel in TF Serving's layout, raw uint8 images of any size in."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from keras_digits.errors import KerasDigitsError
from keras_digits.utils.finite import describe_nonfinite, nonfinite_variables
from keras_digits.utils.io import atomic_dir, current_umask, write_json, write_text

SERVING_SIGNATURE = "serving_default"


FLOAT_SIGNATURE = "serve_float"


INPUT_NAME = "images"


OUTPUT_NAMES = ("probabilities", "class_id", "label")


def _model_input_shape(model) -> tuple[int, int, int]:
    """(H, W, C) of a model's single image input; refuses models without a fixed one."""
    shape = tuple(model.inputs[0].shape[1:]) if getattr(model, "inputs", None) else ()
    if len(shape) != 3 or any(d is None for d in shape):
        raise KerasDigitsError(f"the model's input must be a fixed (height, width, channels) image, got {shape}")
    return tuple(int(d) for d in shape)  # type: ignore[return-value]


def _serving_fns(model, label_names: Sequence[str], preprocess: str = "none"):
    """The two endpoint functions: uint8 any-size images (digit-normalised first with preprocess="digit"),
    and float32 images at the model's shape."""
    import tensorflow as tf

    height, width, channels = _model_input_shape(model)
    labels = tf.constant(list(label_names), dtype=tf.string)

    def outputs(x):
        probs = tf.cond(  # an empty batch gets empty outputs (oneDNN's Conv2D rejects it)
            tf.shape(x)[0] > 0,
            lambda: tf.cast(model(x, training=False), tf.float32),
            lambda: tf.zeros([0, len(label_names)], tf.float32),
        )
        probs = tf.ensure_shape(probs, [None, len(label_names)])
        class_id = tf.argmax(probs, axis=-1, output_type=tf.int64)
        return {"probabilities": probs, "class_id": class_id, "label": tf.gather(labels, class_id)}

    def serve(images):
        from keras_digits.data.adapt import fit_to_model

        return outputs(fit_to_model(images, (height, width, channels), digit=preprocess == "digit"))

    def serve_float(images):
        return outputs(images)

    uint8_spec = tf.TensorSpec([None, None, None, None], tf.uint8, name=INPUT_NAME)
    float_spec = tf.TensorSpec([None, height, width, channels], tf.float32, name=INPUT_NAME)
    return (serve, uint8_spec), (serve_float, float_spec)


def check_exportable(model, label_names: Sequence[str]) -> list[str]:
    """The label names as strings, after checking they fit the model and a labels file, and that the
    weights are finite."""
    num_classes = int(model.outputs[0].shape[-1])
    label_names = [str(n) for n in label_names]
    if len(label_names) != num_classes:
        raise KerasDigitsError(f"{len(label_names)} label names for a model with {num_classes} outputs")
    broken = [n for n in label_names if any(c in n for c in "\n\r")]
    if broken:
        raise KerasDigitsError(f"label name {broken[0]!r} holds a line break; assets/labels.txt needs one name a line")
    bad = nonfinite_variables(model.weights)
    if bad:
        raise KerasDigitsError(f"the model holds non-finite values in {describe_nonfinite(bad)}; not exported")
    return label_names


def export_config(config: dict[str, Any] | None, preprocess: str) -> dict[str, Any]:
    """The run config an export carries, with "preprocess": "digit" when the export normalises digits."""
    if preprocess not in ("none", "digit"):
        raise KerasDigitsError(f"--preprocess must be none or digit, got {preprocess!r}")
    return {**(config or {}), **({"preprocess": "digit"} if preprocess == "digit" else {})}


def write_saved_model(model, folder: Path, label_names: Sequence[str], config: dict[str, Any], preprocess: str) -> None:
    """The SavedModel (both signatures, label names and config as variables) into `folder`, which may
    exist; assets are `write_assets`' job."""
    import keras
    import tensorflow as tf

    (serve, uint8_spec), (serve_float, float_spec) = _serving_fns(model, label_names, preprocess)
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(SERVING_SIGNATURE, serve, input_signature=[uint8_spec])
    archive.add_endpoint(FLOAT_SIGNATURE, serve_float, input_signature=[float_spec])
    archive.add_variable_collection(
        "label_names", [tf.Variable(tf.constant(list(label_names), tf.string), trainable=False, name="label_names")]
    )
    archive.add_variable_collection(
        "config_json", [tf.Variable(json.dumps(config, sort_keys=True), trainable=False, name="config_json")]
    )
    try:
        archive.write_out(str(folder), verbose=False)
    except Exception as exc:  # TF raises many types; the message names the cause
        raise KerasDigitsError(f"SavedModel export failed: {type(exc).__name__}: {exc}") from None


def write_assets(
    folder: Path, label_names: Sequence[str], config: dict[str, Any], dataset: dict[str, Any] | None
) -> None:
    """assets/labels.txt (one name a line, class-id order), assets/config.json, assets/dataset.json."""
    assets = folder / "assets"
    assets.mkdir(exist_ok=True)
    write_text(assets / "labels.txt", "".join(f"{n}\n" for n in label_names))
    write_json(assets / "config.json", config)
    if dataset is not None:
        write_json(assets / "dataset.json", dataset)


def export_model(
    model,
    export_dir: str | Path,
    label_names: Sequence[str],
    config: dict[str, Any] | None = None,
    dataset: dict[str, Any] | None = None,
    overwrite: bool = False,
    preprocess: str = "none",
) -> Path:
    """Write `model` as a SavedModel version folder `export_dir` (atomically); returns its path.
    preprocess="digit" puts the MNIST-style digit normalisation inside serving_default and records
    "preprocess": "digit" in the exported config (so predict does not apply it again)."""
    export_dir = Path(export_dir)
    label_names = check_exportable(model, label_names)
    if export_dir.exists() and not overwrite:
        raise KerasDigitsError(f"{export_dir} already exists; pass --overwrite or another --version")
    config = export_config(config, preprocess)
    with atomic_dir(export_dir) as tmp:
        write_saved_model(model, tmp, label_names, config, preprocess)
        write_assets(tmp, label_names, config, dataset)
        usual_permissions(tmp)
    return export_dir


def usual_permissions(root: Path) -> None:
    """Temporary files and folders are private (0600/0700); give the export the umask's usual modes,
    so a model server running as another user can read it."""
    umask = current_umask()
    root.chmod(0o777 & ~umask)
    for path in root.rglob("*"):
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)
