"""Export a run's best model: a TensorFlow SavedModel in TF Serving's layout, and/or ONNX, LiteRT and a
portable .keras, each proven by its own runtime before the folder appears.

    python -m keras_digits.export --run runs/mnist-simple_cnn-s42 [--format saved_model,onnx,litert,keras]
                                  [--quantize dynamic|int8] [--out saved_models/NAME] [--version 1]

writes `saved_models/NAME/1/` (NAME defaults to the run directory's name). The SavedModel (the default
format) has two signatures:

- `serving_default`: `images` = uint8 `[batch, height, width, channels]` of ANY height and width and
  1, 2 (grey + alpha), 3 (RGB) or 4 (RGBA) channels; with `--preprocess digit`, first the MNIST-style
  digit normalisation (keras_digits.data.digit_norm: grey, polarity, 20 px box, centre of mass
  centred in 28x28). Then, inside the graph of every export: channel conversion to the
  model's channel count (RGB -> grey with PIL's ITU-R 601 weights; grey -> RGB by repeating; alpha
  dropped), a bilinear antialiased resize to the model's input height and width (what PIL's
  BILINEAR resize did to the training data) rounded back onto the uint8 grid, then the model
  (whose own layers rescale/normalise the raw 0..255 pixels).
- `serve_float`: `images` = float32 `[batch, H, W, C]` raw pixels 0..255 already at the model's
  input shape, passed straight to the model (no conversion, no resize).

Both return `probabilities` (float32 `[batch, classes]`), `class_id` (int64 `[batch]`) and `label`
(string `[batch]`). The label names and the training config travel with the model: as tracked
string variables (`loaded.label_names[0]`, `loaded.config_json[0]`) and as files
`assets/labels.txt` (one name per line, in class-id order), `assets/config.json` (the run's
config.json) and `assets/dataset.json`. The result loads with `tf.saved_model.load` alone.

The other formats are made from the model's stock-Keras float32 twin (keras_digits.models.portable):

- `onnx` -> model.onnx: input `images` uint8 `[batch, H, W, C]` at the model's shape, output
  `probabilities`; opset --opset (default 17); label names in the metadata.
- `litert` -> model.tflite (float32), plus model_dynamic.tflite or model_int8.tflite with --quantize
  (int8 calibrated on --calibration-images training images); same input and output as ONNX.
- `keras` -> model.keras: stock Keras layers only, opens with plain keras.saving.load_model.

These take images already fitted to the model's input (the SavedModel resizes in its graph; tf2onnx and
the LiteRT converter cannot carry that resize or the digit normalisation): `predict` and `submit` do it
for them. assets/export.json records per format what the caller must apply.

Every format is then loaded by its own runtime (TensorFlow, onnxruntime, the LiteRT interpreter, plain
Keras) in a fresh Python process that cannot import keras_digits, on the run's stored test examples
(examples-test.npz, when the run has them) and 64 seeded random images: the probabilities must match
the Keras model's within --tolerance (quantized LiteRT: the test accuracy may drop by at most
--max-accuracy-drop, measured on the run's whole test split). The folder appears atomically, only
when every check passed (exit code 1 otherwise, nothing written); an existing version is never
replaced without --overwrite. ONNX and LiteRT need the export extra: pip install -e '.[export]'
(in the keras_digits checkout; .[dev] includes it).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from keras_digits.serving.export_run import DEFAULT_CALIBRATION, export_run
from keras_digits.serving.formats import FORMATS, QUANTIZE, parse_formats
from keras_digits.serving.proof import DEFAULT_MAX_DROP, DEFAULT_TOLERANCE
from keras_digits.utils.cli import positive_int, run_cli


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m keras_digits.export",
        description="Export a run's best model into OUT/VERSION/: a TensorFlow SavedModel (TF Serving layout; "
        "uint8 images of any size in, probabilities, class_id and label out) and/or ONNX, LiteRT and a portable "
        ".keras; each file is checked by its own runtime in a fresh process before the folder appears.",
    )
    p.add_argument("--run", required=True, help="run directory written by keras_digits.train")
    p.add_argument(
        "--format",
        action="append",
        metavar="FORMAT[,FORMAT]",
        help=f"one or more of {', '.join(FORMATS)}, or all (repeat or comma-separate; default saved_model)",
    )
    p.add_argument(
        "--quantize",
        choices=QUANTIZE,
        help="with --format litert, also a quantized model: dynamic (int8 weights) or int8 (weights and "
        "activations, calibrated on training images); its test-accuracy change is printed and recorded "
        "(needs the run's data)",
    )
    p.add_argument("--opset", type=positive_int, help="ONNX opset (default 17)")
    p.add_argument(
        "--tolerance",
        type=float,
        default=DEFAULT_TOLERANCE,
        help="largest |difference| of a probability accepted between a float format and Keras "
        f"(default {DEFAULT_TOLERANCE:g})",
    )
    p.add_argument(
        "--max-accuracy-drop",
        type=float,
        default=DEFAULT_MAX_DROP,
        help=f"largest test-accuracy loss of a quantized model, as a fraction (default {DEFAULT_MAX_DROP:g} = 1 point)",
    )
    p.add_argument(
        "--calibration-images",
        type=positive_int,
        default=DEFAULT_CALIBRATION,
        help=f"training images that calibrate --quantize int8 (default {DEFAULT_CALIBRATION})",
    )
    p.add_argument("--data-dir", help="where the run's data is, for --quantize (default: the run's own --data-dir)")
    p.add_argument("--out", help="model folder (default saved_models/<run directory name>)")
    p.add_argument("--version", type=positive_int, default=1, help="version subfolder (default 1)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing version folder")
    p.add_argument(
        "--preprocess",
        choices=("none", "digit"),
        default="none",
        help="digit: put the MNIST-style digit normalisation inside serving_default, for TF Serving "
        "clients (recorded in assets/config.json; predict then does not apply it again); the other "
        "formats cannot carry it: they record that the caller applies it, and predict does; default none",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    formats = parse_formats(args.format or ["saved_model"])
    path = export_run(
        args.run,
        args.out,
        args.version,
        args.overwrite,
        args.preprocess,
        formats=formats,
        quantize=args.quantize,
        opset=args.opset,
        tolerance=args.tolerance,
        max_drop=args.max_accuracy_drop,
        data_dir=args.data_dir,
        calibration=args.calibration_images,
        log=print,
    )
    names = ", ".join(formats) + (f" + {args.quantize} LiteRT" if args.quantize else "")
    print(f"written to {path} ({names}); checks recorded in {path / 'assets' / 'export.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
