"""A finished run exported in one or more formats into one version folder, each format proven by its own
runtime in a fresh process before the folder appears.

    saved_models/NAME/VERSION/
        saved_model.pb, variables/   SavedModel (TF Serving layout; uint8 images of any size)
        model.onnx                   ONNX (uint8 images at the model's shape -> probabilities)
        model.tflite                 LiteRT, float32
        model_dynamic.tflite         LiteRT, dynamic-range quantized (--quantize dynamic)
        model_int8.tflite            LiteRT, int8 (--quantize int8; calibrated on training images)
        model.keras                  stock-Keras twin (keras.saving.load_model, no keras_digits)
        assets/labels.txt, config.json, dataset.json
        assets/export.json           what each file takes and gives, and its check

The folder is written beside its final place and renamed onto it only when every check passed.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from keras_digits.errors import KerasDigitsError
from keras_digits.serving import formats as fmts
from keras_digits.serving.proof import DEFAULT_MAX_DROP, DEFAULT_TOLERANCE

SAVED_MODELS_DIR = Path("saved_models")
EXAMPLE_SPLITS = ("test", "val")  # whose stored examples (examples-SPLIT.npz) the float formats are checked on
DEFAULT_CALIBRATION = 256


def stored_examples(run_dir: Path, shape: tuple[int, ...]) -> tuple[np.ndarray, str]:
    """The run's stored example images (examples-test.npz, else examples-val.npz) and what they are."""
    for split in EXAMPLE_SPLITS:
        path = run_dir / f"examples-{split}.npz"
        if not path.is_file():
            continue
        try:
            with np.load(path, allow_pickle=False) as data:
                images = np.asarray(data["images"]) if "images" in data.files else np.zeros((0,))
        except (OSError, ValueError) as exc:
            raise KerasDigitsError(f"cannot read {path}: {exc}") from None
        if images.ndim == 4 and tuple(images.shape[1:]) == tuple(shape) and len(images):
            return images.astype(np.uint8), f"the run's {len(images)} stored {split} examples"
    raise KerasDigitsError(
        f"{run_dir} holds no stored examples (examples-test.npz) to check the exports on; "
        f"score the run again to write them: python -m keras_digits.evaluate --run {run_dir} --split test"
    )


def _labelled_test(config: dict, model, record: dict, data_dir: str | None):
    """The run's own test split and training images, for quantized formats; errors when the data found
    is not the run's."""
    from keras_digits.config import TrainConfig
    from keras_digits.data import load_for
    from keras_digits.evaluation.runs import check_compatible, same_data

    bundle = load_for(TrainConfig.from_dict(config), data_dir)
    check_compatible(model, record, bundle, "cannot measure the quantized accuracy")
    if record and not same_data(record, bundle, "test"):
        raise KerasDigitsError(
            f"the test split found ({bundle.source}) is not the one the run recorded; point --data-dir at the "
            "run's data"
        )
    return bundle


def _calibration(train_images: np.ndarray, count: int, seed: int) -> Callable:
    """A representative-dataset generator: `count` seeded random training images, one per batch."""
    idx = np.sort(np.random.default_rng([seed, 31337]).permutation(len(train_images))[:count])

    def generate():
        for i in idx:
            yield [np.asarray(train_images[i : i + 1], dtype=np.uint8)]

    return generate


def predict_keras(model, images: np.ndarray, batch: int = 256) -> np.ndarray:
    """A Keras model's float32 probabilities for uint8 images, `batch` at a time."""
    parts = [
        np.asarray(model(images[i : i + batch].astype(np.float32), training=False), dtype=np.float32)
        for i in range(0, len(images), batch)
    ]
    return np.concatenate(parts) if parts else np.zeros((0, int(model.outputs[0].shape[-1])), np.float32)


def _saved_model_reference(model, images: np.ndarray, preprocess: str) -> np.ndarray:
    """What the SavedModel's serving_default should give for model-shaped uint8 images."""
    if preprocess != "digit":
        return predict_keras(model, images)
    from keras_digits.data.adapt import fit_array

    fitted, _ = fit_array(images, tuple(int(d) for d in model.inputs[0].shape[1:]), digit=True)
    return predict_keras(model, fitted)


def _input_notes(fmt: str, shape: tuple[int, ...], preprocess: str) -> dict[str, Any]:
    h, w, c = shape
    if fmt == "saved_model":
        return {
            "fits_images_itself": True,
            "digit_normalisation": "in the graph" if preprocess == "digit" else "none",
        }
    caller = [
        f"fit images to {h}x{w}x{c} uint8: channels (RGB to grey with ITU-R 601 weights, grey to RGB by "
        "repetition, alpha dropped) and an antialiased bilinear resize rounded to the uint8 grid "
        "(keras_digits.data.adapt.fit_to_model)"
    ]
    if preprocess == "digit":
        caller.insert(0, "the MNIST-style digit normalisation (keras_digits.data.digit_norm), first")
    return {"fits_images_itself": False, "caller_applies": caller}


def export_run(
    run_dir: str | Path,
    out: str | Path | None = None,
    version: int = 1,
    overwrite: bool = False,
    preprocess: str = "none",
    formats: Sequence[str] = ("saved_model",),
    quantize: str | None = None,
    opset: int | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    max_drop: float = DEFAULT_MAX_DROP,
    data_dir: str | None = None,
    calibration: int = DEFAULT_CALIBRATION,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Export a finished run's best.keras in `formats` to `out/<version>` (default saved_models/<run
    name>/<version>), each checked in a fresh process (the record: assets/export.json); returns the folder."""
    from keras_digits.serving.convert import DEFAULT_OPSET

    say = log or (lambda line: print(line, file=sys.stderr))
    run_dir = Path(run_dir)
    formats = list(formats)
    _check_options(run_dir, version, formats, quantize, tolerance, max_drop, calibration)
    for fmt in formats:
        fmts.require(fmt)
    from keras_digits.utils.io import check_output_dir

    out = Path(out) if out is not None else SAVED_MODELS_DIR / run_dir.resolve().name
    version_dir = check_output_dir(out / str(version), "export folder")
    if version_dir.exists() and not overwrite:  # checked before the (slow) model load
        raise KerasDigitsError(f"{version_dir} already exists; pass --overwrite or another --version")
    from keras_digits.evaluation.records import dataset_record, model_label_names
    from keras_digits.evaluation.runs import load_run
    from keras_digits.serving.export import check_exportable, export_config

    record = dataset_record(run_dir)
    config, model = load_run(run_dir)
    num_classes = int(model.outputs[0].shape[-1])
    label_names = check_exportable(model, model_label_names(record, num_classes))
    if not record:
        say(f"note: {run_dir} has no dataset.json; labels are the class ids 0..{num_classes - 1}")
    exported_config = export_config(config, preprocess)
    shape = tuple(int(d) for d in model.inputs[0].shape[1:])
    examples, examples_what = stored_examples(run_dir, shape)
    bundle = _labelled_test(config, model, record, data_dir) if quantize else None
    twin = None
    if any(f != "saved_model" for f in formats):
        from keras_digits.models.portable import stock_twin

        twin = stock_twin(model)
    from keras_digits.utils.io import clean_stale_temps
    from keras_digits.utils.lock import hold

    with hold(version_dir, "export folder"):
        clean_stale_temps(out, version_dir.name)  # left by an export that was killed
        _write_and_prove(
            version_dir,
            model,
            twin,
            formats,
            label_names,
            exported_config,
            record or None,
            preprocess,
            examples,
            examples_what,
            bundle,
            quantize,
            opset or DEFAULT_OPSET,
            tolerance,
            max_drop,
            calibration,
            int(config.get("seed", 0) or 0),
            say,
        )
    return version_dir


def _check_options(run_dir, version, formats, quantize, tolerance, max_drop, calibration) -> None:
    if not Path(run_dir).is_dir():
        raise KerasDigitsError(f"run directory not found: {run_dir}")
    if version <= 0:
        raise KerasDigitsError(f"--version must be a positive integer, got {version}")
    unknown = [f for f in formats if f not in fmts.FORMATS]
    if unknown or not formats:
        raise KerasDigitsError(f"formats must be among {', '.join(fmts.FORMATS)}, got {formats}")
    if quantize is not None and quantize not in fmts.QUANTIZE:
        raise KerasDigitsError(f"--quantize must be one of {', '.join(fmts.QUANTIZE)}, got {quantize!r}")
    if quantize and "litert" not in formats:
        raise KerasDigitsError("--quantize applies to LiteRT: add --format litert")
    if not (tolerance > 0 and np.isfinite(tolerance)):
        raise KerasDigitsError(f"--tolerance must be a positive number, got {tolerance}")
    if not (0 <= max_drop <= 1):
        raise KerasDigitsError(f"--max-accuracy-drop must be between 0 and 1, got {max_drop}")
    if calibration < 1:
        raise KerasDigitsError(f"--calibration-images must be at least 1, got {calibration}")


def _write_and_prove(
    version_dir: Path,
    model,
    twin,
    formats: list[str],
    label_names: list[str],
    config: dict,
    dataset: dict | None,
    preprocess: str,
    examples: np.ndarray,
    examples_what: str,
    bundle,
    quantize: str | None,
    opset: int,
    tolerance: float,
    max_drop: float,
    calibration: int,
    seed: int,
    say: Callable[[str], None],
) -> dict[str, Any]:
    from keras_digits.serving import convert
    from keras_digits.serving.export import usual_permissions, write_assets, write_saved_model
    from keras_digits.serving.proof import accuracy_change, compare, run_fresh
    from keras_digits.utils.io import atomic_dir, write_json

    shape = tuple(int(d) for d in model.inputs[0].shape[1:])
    records: dict[str, Any] = {}
    twin_reference = predict_keras(twin, examples) if twin is not None else None
    with atomic_dir(version_dir) as tmp:
        if "saved_model" in formats:
            write_saved_model(model, tmp, label_names, config, preprocess)
            records["saved_model"] = {"path": ".", "signatures": ["serving_default", "serve_float"]}
        write_assets(tmp, label_names, config, dataset)
        if "onnx" in formats:
            records["onnx"] = convert.write_onnx(
                twin, tmp / fmts.FILES["onnx"], opset, convert.onnx_metadata(label_names, config)
            )
        if "litert" in formats:
            records["litert"] = convert.write_litert(twin, tmp / fmts.FILES["litert"])
            if quantize:
                train_images = bundle.train[0]
                source = _calibration(train_images, min(calibration, len(train_images)), seed)
                name = f"litert_{quantize}"
                records[name] = convert.write_litert(twin, tmp / fmts.quantized_file(quantize), quantize, source)
                if quantize == "int8":
                    records[name]["calibration"] = {"images": min(calibration, len(train_images)), "from": "train"}
        if "keras" in formats:
            records["keras"] = convert.write_keras(twin, tmp / fmts.FILES["keras"])

        if twin is not None:
            run_probs = predict_keras(model, examples)
            twin_diff = float(np.abs(run_probs - twin_reference).max()) if len(examples) else 0.0
            policy = getattr(model.dtype_policy, "name", "float32")
            if policy == "float32" and twin_diff > tolerance:
                raise KerasDigitsError(
                    f"the stock-Keras twin differs from the run's model by {twin_diff:.3g} (tolerance {tolerance:g})"
                )
        for name, rec in records.items():
            kind = "litert" if name.startswith("litert") else name
            path = tmp if name == "saved_model" else tmp / rec["file"]
            rec.update(_input_notes(kind, shape, preprocess))
            rec["bytes"] = _size(path)
            quantized = name.startswith("litert_")
            reference = _saved_model_reference(model, examples, preprocess) if name == "saved_model" else twin_reference
            probs, report = run_fresh(kind, path, examples)
            rec["runtime"] = f"{report.get('runtime', kind)} {report.get('version', '?')}"
            rec["fresh_process"] = {
                "keras_digits_importable": False,
                "tensorflow_imported": bool(report.get("tensorflow_imported")),
            }
            if quantized:
                diff = float(np.abs(probs - reference).max()) if len(examples) else 0.0
                rec["examples_max_abs_diff"] = diff
                x_test, y_test = bundle.test
                keras_acc = float((predict_keras(twin, x_test).argmax(-1) == np.asarray(y_test)).mean())
                test_probs, _ = run_fresh(kind, path, x_test)
                rec["check"] = accuracy_change(name, test_probs, np.asarray(y_test), keras_acc, max_drop)
            else:
                rec["check"] = compare(name, probs, reference, tolerance, examples_what)
            say(describe(name, rec))
        export = {
            "run_config": {k: config.get(k) for k in ("arch", "dataset", "precision", "preprocess") if k in config},
            "label_names": label_names,
            "formats": records,
        }
        if twin is not None:
            export["stock_twin"] = {
                "max_abs_diff_to_run_model": twin_diff,
                "run_model_dtype_policy": policy,
                "on": examples_what,
            }
        write_json(tmp / "assets" / "export.json", export)
        usual_permissions(tmp)
    return export


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in (path / "variables").rglob("*") if p.is_file()) + sum(
        p.stat().st_size for p in path.glob("*.pb")
    )


def describe(name: str, rec: dict[str, Any]) -> str:
    """One line about an exported format and its check."""
    check = rec.get("check", {})
    where = rec.get("file", "saved_model.pb + variables/")
    size = f"{rec.get('bytes', 0) / 2**20:.2f} MiB"
    if "keras_accuracy" in check:
        result = (
            f"test accuracy {check['keras_accuracy']:.4f} -> {check['accuracy']:.4f} "
            f"({100 * check['change']:+.2f} points on {check['images']} images)"
        )
    else:
        result = (
            f"max |diff| {check.get('max_abs_diff', float('nan')):.1e} <= {check.get('tolerance', 0):g} "
            f"on {check.get('images', 0)} examples"
        )
    return f"{name:<14} {where:<26} {size:>10}  {rec.get('runtime', '')}, fresh process: {result}  ok"
