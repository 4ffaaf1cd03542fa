"""Contest submission CSV from a folder of test images and an exported model (SavedModel, .onnx, .tflite, .keras).

    python -m keras_digits.submit --model saved_models/NAME/1 --images DIR [--format ids] [--out submission.csv]
                                  [--id-width 5] [--label name|id]

Every image under DIR (recursively; hidden files ignored) gets one row; its id comes from the
file name's stem. Formats:

    ids     (default) header `id,label`; the id is the stem, zero-padded to --id-width digits when it
            is a whole number ("7.png" -> 00007 with --id-width 5; 0 = no padding; a non-numeric
            stem is used as it is), as in the reports' submissions.
    kaggle  header `ImageId,Label`, Kaggle's digit-recognizer format: ImageId is the stem as a plain
            integer (so name the files 1.png ... 28000.png; Kaggle's ids are 1-based); every stem
            must be a whole number.

`label` is the predicted label name (for the digit datasets the digit itself) or, with --label id,
the class index. Rows are sorted by id (numerically when every id is a number). The file is written
atomically (default submission.csv). A submission with a missing row would be scored wrongly, so
if any image cannot be decoded, each bad file is named on stderr, nothing is written and the exit
code is 1. Files without an image extension (a README, say) are skipped with a note. Duplicate ids
(7.png and 007.png) and a missing model or folder are errors (exit 2).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from keras_digits.data.adapt import PREPROCESS, PREPROCESS_HELP
from keras_digits.errors import KerasDigitsError
from keras_digits.serving.submission import FORMATS, make_rows, submission_id, write_submission
from keras_digits.utils.cli import positive_int, run_cli
from keras_digits.utils.io import check_output_file


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m keras_digits.submit",
        description="Write a contest submission CSV (one row per image, sorted by id) from a folder of "
        "images and an exported model (SavedModel folder, or a .onnx, .tflite or .keras file).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="formats:\n"
        "  ids     header id,label; id = file stem, zero-padded to --id-width digits when numeric\n"
        "          (7.png -> 00007); non-numeric stems are kept as they are\n"
        "  kaggle  header ImageId,Label (Kaggle digit-recognizer); ImageId = the numeric file stem\n"
        "          as a plain integer (1-based ids: name files 1.png ... N.png)\n"
        "label = predicted label name (default) or class index (--label id).\n"
        "Any undecodable image: named on stderr, nothing written, exit 1.",
    )
    p.add_argument(
        "--model",
        required=True,
        help="SavedModel folder (saved_models/NAME/VERSION or saved_models/NAME), or a model file from export "
        "--format (model.onnx, model.tflite, model.keras)",
    )
    p.add_argument("--images", required=True, help="folder of test images (searched recursively)")
    p.add_argument("--format", choices=sorted(FORMATS), default="ids", help="submission format (default ids)")
    p.add_argument("--out", default="submission.csv", help="CSV to write (default submission.csv)")
    p.add_argument(
        "--id-width",
        type=int,
        default=5,
        help="zero-pad numeric ids to this many digits, ids format (default 5; 0 = no padding)",
    )
    p.add_argument(
        "--label",
        choices=("name", "id"),
        default="name",
        help="label column: predicted label name or class index (default name)",
    )
    p.add_argument("--batch-size", type=positive_int, default=64, help="images per model call (default 64)")
    p.add_argument("--preprocess", choices=PREPROCESS, default="auto", help=PREPROCESS_HELP)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from keras_digits.data.folder import list_images
    from keras_digits.serving.predictor import Predictor, check_preprocess, make_progress, report_inkless

    args = build_parser().parse_args(argv)
    if args.id_width < 0:
        raise KerasDigitsError(f"--id-width must be >= 0, got {args.id_width}")
    check_output_file(args.out, "--out")
    images_dir = Path(args.images)
    if not images_dir.is_dir():
        raise KerasDigitsError(f"images folder not found: {images_dir}")
    files, others = list_images(images_dir)
    for path in others:
        print(f"note: skipped {path} (not an image file)", file=sys.stderr)
    if not files:
        raise KerasDigitsError(f"no image files in {images_dir}")
    for path in files:  # id problems surface before the model is loaded
        submission_id(path.stem, args.format, args.id_width)
    check_preprocess(args.model, args.preprocess)
    predictor = Predictor(args.model, args.preprocess)
    failed: list[str] = []
    progress = make_progress(len(files), label="submit")
    try:
        preds = list(
            predictor.predict_files(
                files, args.batch_size, on_error=lambda p, why: failed.append(f"{p}: {why}"), progress=progress
            )
        )
    finally:
        if progress:
            progress.close()
    if failed:
        for line in failed:
            print(f"unreadable {line}", file=sys.stderr)
        print(f"error: {len(failed)} image(s) could not be predicted; {args.out} not written", file=sys.stderr)
        return 1
    report_inkless(predictor)
    rows = make_rows(preds, args.format, args.id_width, args.label)
    write_submission(rows, args.out, args.format)
    print(f"{len(rows)} row(s) written to {args.out} ({args.format} format)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
