"""Predict image files with an exported model (SavedModel, ONNX, LiteRT or .keras); CSV out.

    python -m keras_digits.predict --model saved_models/NAME/1 PATH... [--out FILE.csv] [--top-k 3] [--batch-size 64]

PATH is an image file or a folder (searched recursively; files with the extensions of
keras_digits.data.folder.IMAGE_EXTENSIONS: PNG, JPEG, BMP, GIF, TIFF, WebP; hidden files ignored).
--model may also name the model folder above the versions (saved_models/NAME): its highest
numbered version is used, as TF Serving does; or a model file from `export --format`: model.onnx,
model.tflite (or a quantized model_int8.tflite), model.keras (or a run's own best.keras), with the
labels from the assets/ folder beside it. Such files take images at the model's input shape, so
the images are first fitted to it here with the function the SavedModel runs in its graph (and
digit-normalised where the export asked for it): every format gives the same labels.

Output CSV (stdout, or --out written atomically), one row per image in the order found (arguments
in order, each folder's files sorted by path), columns:

    file        the image path
    label       predicted label name
    class_id    predicted class index
    confidence  probability of the predicted class (6 decimals)
    top_k       the K most probable classes, best first, as CLASS_ID:PROBABILITY joined by ";",
                e.g. "3:0.9100;8:0.0500;5:0.0200" (4 decimals; K = --top-k, at most the class count)

Images are decoded at their native size (grey stays one channel, anything else becomes RGB; an image
longer than 2048 px is reduced while decoded, one too large to decode is skipped, transparent pixels
are background: see keras_digits.data.folder.read_image) and fed as uint8; the model's serving
signature converts channels and resizes. With --preprocess digit
(the default `auto` chooses it for models trained on MNIST-style centred digits, unless the export
already does it in its signature) each image is first digit-normalised the way MNIST was built
(keras_digits.data.digit_norm); --preprocess none is refused for a model exported with
--preprocess digit (its signature always normalises). Images of the same size are batched together.
For a SavedModel only TensorFlow (and Pillow) is needed: keras is never imported then.

Exit codes: 0 all images predicted; 1 some files were not images or could not be decoded (each is
named on stderr, the rest are still predicted); 2 usage errors (missing model or path, bad option).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from keras_digits.data.adapt import PREPROCESS, PREPROCESS_HELP
from keras_digits.errors import KerasDigitsError
from keras_digits.serving.predictor import (
    PROGRESS_MIN_FILES,
    Predictor,
    check_preprocess,
    find_images,
    make_progress,
    report_inkless,
    write_predictions,
)
from keras_digits.utils.cli import positive_int, run_cli
from keras_digits.utils.io import atomic_path, check_output_file


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m keras_digits.predict",
        description="Predict image files or folders with an exported model (SavedModel folder, .onnx, .tflite "
        "or .keras file); writes CSV "
        "(file,label,class_id,confidence,top_k) to stdout or --out.",
        epilog='top_k holds the K best classes as CLASS_ID:PROBABILITY joined by ";", e.g. '
        '"3:0.9100;8:0.0500;5:0.0200". Exit code 1 when some files could not be read '
        "(each is named on stderr), 2 for usage errors.",
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files and/or folders (searched recursively)")
    p.add_argument(
        "--model",
        required=True,
        help="SavedModel folder (saved_models/NAME/VERSION, or saved_models/NAME for its latest version), or a "
        "model file from export --format: model.onnx, model.tflite, model_int8.tflite, model.keras",
    )
    p.add_argument("--out", help="CSV file to write (atomically; default stdout)")
    p.add_argument("--top-k", type=positive_int, default=3, help="classes listed in the top_k column (default 3)")
    p.add_argument("--batch-size", type=positive_int, default=64, help="images per model call (default 64)")
    p.add_argument("--preprocess", choices=PREPROCESS, default="auto", help=PREPROCESS_HELP)
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help=f"progress line on stderr (default: when stderr is a terminal and there are "
        f">= {PROGRESS_MIN_FILES} files)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.out:
        check_output_file(args.out, "--out")
    files, skipped = find_images(args.paths)  # usage errors before the (slow) model load
    if not files and not skipped:
        raise KerasDigitsError("no files found in " + ", ".join(args.paths))
    check_preprocess(args.model, args.preprocess)
    predictor = Predictor(args.model, args.preprocess)
    k = min(args.top_k, predictor.num_classes)
    failed: list[Path] = []

    def on_error(path: Path, reason: str) -> None:
        failed.append(path)
        if progress and progress.inplace:
            sys.stderr.write("\n")
        print(f"skipped {path}: {reason}", file=sys.stderr)

    progress = None
    for path, reason in skipped:
        on_error(path, reason)
    progress = make_progress(len(files), args.progress)
    preds = predictor.predict_files(files, args.batch_size, on_error=on_error, progress=progress)
    try:
        if args.out:
            with atomic_path(args.out) as tmp, open(tmp, "w", newline="") as fh:
                n = write_predictions(preds, fh, k)
        else:
            n = write_predictions(preds, sys.stdout, k)
    finally:
        if progress:
            progress.close()
    report_inkless(predictor)
    if failed:
        print(f"warning: {len(failed)} file(s) skipped, {n} predicted", file=sys.stderr)
        return 1
    if args.out:
        print(f"{n} prediction(s) written to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
