"""A finished run exported in one or more formats into one version folder, each format proven by its own
runtime in a fresh process before the folder appears.

    saved_models/NAME/VERSION/
        saved_model.pb, variables/   SavedModel (TF Serving layout; uint8 images of any size)
        model.onnx                   ONNX (uint8 images at the model's shape -> probabilities)
        model.tflite                 LiteRT, float32
        model_dynamic.tflite         LiteRT, dynamic-range quantized (--quantize dynamic)
        model_int8.tflite            LiteRT, int8 (--quantize int8; calibrated on training images)
        model.keras                  stock-Keras twin (keras.saving.load_model, no keras_digits)
        assets/labels.txt, config.json, dataset.json, examples-test.npz (the run's stored examples)
        assets/export.json           what each file takes and gives, and its check

The folder is written beside its final place and renamed onto it only when every check passed.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from keras_digits.errors import KerasDigitsError
from keras_digits.serving import formats as fmts
from keras_digits.serving.convert import DEFAULT_OPSET
from keras_digits.serving.proof import DEFAULT_MAX_DROP, DEFAULT_TOLERANCE, ProofFailed

SAVED_MODELS_DIR = Path("saved_models")
DEFAULT_CALIBRATION = 256


@dataclass
class ExportJob:
    """Everything one export writes and checks."""

    model: Any  # the run's Keras model, as trained (the SavedModel's source)
    twin: Any  # its stock-Keras float32 twin (the other formats' source), None for a SavedModel alone
    twin_check: dict[str, Any]  # how the twin compares with the run's model on the check images
    formats: list[str]
    label_names: list[str]
    config: dict[str, Any]  # the run config the export carries (with "preprocess": "digit" when asked)
    dataset: dict[str, Any] | None
    preprocess: str
    images: np.ndarray  # the check images (uint8, model shape)
    images_what: str
    bundle: Any  # the run's data, for quantized formats (None otherwise)
    quantize: str | None
    opset: int
    tolerance: float
    max_drop: float
    calibration: int
    seed: int
    examples_file: Path | None = None  # the run's stored test examples, copied into assets/ (the demo shows them)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(d) for d in self.model.inputs[0].shape[1:])  # type: ignore[return-value]


def _labelled_test(config: dict, model, record: dict, data_dir: str | None):
    """The run's data (its own test split and training images), for quantized formats; an error when the
    data found is not the run's."""
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


def _saved_model_reference(job: ExportJob) -> np.ndarray:
    """What the SavedModel's serving_default should give for the check images."""
    if job.preprocess != "digit":
        return predict_keras(job.model, job.images)
    from keras_digits.data.adapt import fit_array

    fitted, _ = fit_array(job.images, job.shape, digit=True)
    return predict_keras(job.model, fitted)


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
    name>/<version>), each checked in a fresh process (the record: assets/export.json); returns the folder.
    `log` gets one line per checked format (default: stderr); notes go to stderr."""
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
    from keras_digits.serving.proof import check_images

    record = dataset_record(run_dir)
    config, model = load_run(run_dir)
    num_classes = int(model.outputs[0].shape[-1])
    label_names = check_exportable(model, model_label_names(record, num_classes))
    if not record:
        _note(f"{run_dir} has no dataset.json; labels are the class ids 0..{num_classes - 1}")
    seed = int(config.get("seed", 0) or 0)
    images, images_what = check_images(run_dir, tuple(int(d) for d in model.inputs[0].shape[1:]), seed)
    twin, twin_check = _twin(model, images, tolerance) if any(f != "saved_model" for f in formats) else (None, {})
    job = ExportJob(
        model=model,
        twin=twin,
        twin_check=twin_check,
        formats=formats,
        label_names=label_names,
        config=export_config(config, preprocess),
        dataset=record or None,
        preprocess=preprocess,
        images=images,
        images_what=images_what,
        bundle=_labelled_test(config, model, record, data_dir) if quantize else None,
        quantize=quantize,
        opset=opset or DEFAULT_OPSET,
        tolerance=tolerance,
        max_drop=max_drop,
        calibration=calibration,
        seed=seed,
        # the demo shows them; only beside the Keras file it needs (a TF Serving folder carries no test images)
        examples_file=run_dir / "examples-test.npz"
        if "keras" in formats and (run_dir / "examples-test.npz").is_file()
        else None,
    )
    if "saved_model" not in formats:
        _note(f"{version_dir} will hold no SavedModel: TF Serving, which loads the highest version, cannot serve it")
    from keras_digits.utils.io import clean_stale_temps
    from keras_digits.utils.lock import hold

    with hold(version_dir, "export folder"):
        clean_stale_temps(out, version_dir.name)  # left by an export that was killed
        _write_and_prove(version_dir, job, say)
    return version_dir


def _note(text: str) -> None:
    print(f"note: {text}", file=sys.stderr)


def _twin(model, images: np.ndarray, tolerance: float):
    """The stock-Keras float32 twin, checked against the run's model on the check images first: equal within
    `tolerance` for a float32 model; for a mixed-precision one the difference is said."""
    from keras_digits.models.portable import all_layers, stock_twin

    twin = stock_twin(model)
    ref, got = predict_keras(model, images), predict_keras(twin, images)
    diff = float(np.abs(ref - got).max()) if len(images) else 0.0
    mixed = sorted({getattr(layer.dtype_policy, "name", "float32") for layer in all_layers(model)} - {"float32"})
    policy = mixed[0] if mixed else "float32"
    check = {"max_abs_diff_to_run_model": diff, "run_model_dtype_policy": policy}
    if policy == "float32" and diff > tolerance:
        raise ProofFailed(
            f"the stock-Keras twin differs from the run's model by {diff:.3g} (tolerance {tolerance:g}); "
            "nothing written"
        )
    if policy != "float32":
        same = float((ref.argmax(-1) == got.argmax(-1)).mean()) if len(images) else 1.0
        _note(
            f"the run's model computes in {policy}; ONNX, LiteRT and .keras are float32 (max |diff| "
            f"{diff:.2g}, same class on {100 * same:.1f}% of the check images), the SavedModel keeps {policy}"
        )
        check["same_class_fraction"] = same
    return twin, check


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


def _write(tmp: Path, job: ExportJob) -> dict[str, dict[str, Any]]:
    """Every requested file into `tmp`; their records (what each holds), in FORMATS order."""
    from keras_digits.serving import convert
    from keras_digits.serving.export import write_assets, write_saved_model

    records: dict[str, dict[str, Any]] = {}
    if "saved_model" in job.formats:
        write_saved_model(job.model, tmp, job.label_names, job.config, job.preprocess)
        records["saved_model"] = {"path": ".", "signatures": ["serving_default", "serve_float"]}
    write_assets(tmp, job.label_names, job.config, job.dataset)
    if job.examples_file is not None:
        import shutil

        shutil.copyfile(job.examples_file, tmp / "assets" / "examples-test.npz")
    if "onnx" in job.formats:
        meta = convert.onnx_metadata(job.label_names, job.config)
        records["onnx"] = convert.write_onnx(job.twin, tmp / fmts.FILES["onnx"], job.opset, meta)
    if "litert" in job.formats:
        records["litert"] = convert.write_litert(job.twin, tmp / fmts.FILES["litert"])
        if job.quantize:
            train_images = job.bundle.train[0]
            count = min(job.calibration, len(train_images))
            source = _calibration(train_images, count, job.seed)
            name = f"litert_{job.quantize}"
            records[name] = convert.write_litert(
                job.twin, tmp / fmts.quantized_file(job.quantize), job.quantize, source
            )
            if job.quantize == "int8":
                records[name]["calibration"] = {"images": count, "from": "train"}
    if "keras" in job.formats:
        records["keras"] = convert.write_keras(job.twin, tmp / fmts.FILES["keras"])
    return records


def _prove(tmp: Path, name: str, rec: dict[str, Any], job: ExportJob, twin_reference) -> None:
    """Run one written format in a fresh process and add its check to `rec` (ProofFailed when it fails)."""
    from keras_digits.serving.export_record import input_notes, size_of
    from keras_digits.serving.proof import accuracy_change, compare, run_fresh

    kind = "litert" if name.startswith("litert") else name
    path = tmp if name == "saved_model" else tmp / rec["file"]
    rec.update(input_notes(kind, job.shape, job.preprocess))
    rec["bytes"] = size_of(path)
    reference = _saved_model_reference(job) if name == "saved_model" else twin_reference
    probs, report = run_fresh(kind, path, job.images)
    rec["runtime"] = f"{report.get('runtime', kind)} {report.get('version', '?')}"
    rec["fresh_process"] = {
        "keras_digits_importable": False,
        "tensorflow_imported": bool(report.get("tensorflow_imported")),
    }
    if not name.startswith("litert_"):
        rec["check"] = compare(name, probs, reference, job.tolerance, job.images_what)
        return
    rec["check_images_max_abs_diff"] = float(np.abs(probs - reference).max()) if len(job.images) else 0.0
    x_test, y_test = job.bundle.test
    y_test = np.asarray(y_test).reshape(-1)
    keras_acc = float((predict_keras(job.twin, x_test).argmax(-1) == y_test).mean())
    test_probs, _ = run_fresh(kind, path, x_test)
    rec["check"] = accuracy_change(name, test_probs, y_test, keras_acc, job.max_drop)


def _write_and_prove(version_dir: Path, job: ExportJob, say: Callable[[str], None]) -> None:
    from keras_digits.serving.export import usual_permissions
    from keras_digits.serving.export_record import describe
    from keras_digits.utils.io import atomic_dir, write_json

    twin_reference = predict_keras(job.twin, job.images) if job.twin is not None else None
    with atomic_dir(version_dir) as tmp:
        records = _write(tmp, job)
        for name, rec in records.items():
            _prove(tmp, name, rec, job, twin_reference)
            say(describe(name, rec))
        export: dict[str, Any] = {
            "run_config": {
                k: job.config.get(k) for k in ("arch", "dataset", "precision", "preprocess") if k in job.config
            },
            "label_names": job.label_names,
            "checked_on": job.images_what,
            "formats": records,
        }
        if job.twin is not None:
            export["stock_twin"] = {**job.twin_check, "on": job.images_what}
        write_json(tmp / "assets" / "export.json", export)
        usual_permissions(tmp)
