"""Export a run's best model as a TensorFlow SavedModel in TF Serving's layout.

    python -m keras_digits.export --run runs/mnist-simple_cnn-s42 [--out saved_models/NAME] [--version 1]

writes `saved_models/NAME/1/` (NAME defaults to the run directory's name) with two signatures:

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
config.json) and `assets/dataset.json`. The version folder appears atomically (the export is
written to a hidden temporary folder beside it, then renamed) and an existing version is never
replaced without `--overwrite`. The result loads with `tf.saved_model.load` alone: no keras or
keras_digits needed to serve it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from keras_digits.serving.export import FLOAT_SIGNATURE, SERVING_SIGNATURE, export_run
from keras_digits.utils.cli import positive_int, run_cli


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m keras_digits.export",
        description="Export a run's best model as a TensorFlow SavedModel (TF Serving layout OUT/VERSION/) "
        "whose serving_default signature takes uint8 images of any size with 1 or 3 channels "
        "and returns probabilities, class_id and label.",
    )
    p.add_argument("--run", required=True, help="run directory written by keras_digits.train")
    p.add_argument("--out", help="model folder (default saved_models/<run directory name>)")
    p.add_argument("--version", type=positive_int, default=1, help="version subfolder (default 1)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing version folder")
    p.add_argument(
        "--preprocess",
        choices=("none", "digit"),
        default="none",
        help="digit: put the MNIST-style digit normalisation inside serving_default, for TF Serving "
        "clients (recorded in assets/config.json; predict then does not apply it again); "
        "default none",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    path = export_run(args.run, args.out, args.version, args.overwrite, args.preprocess)
    print(f"SavedModel written to {path} (signatures: {SERVING_SIGNATURE}, {FLOAT_SIGNATURE})")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
