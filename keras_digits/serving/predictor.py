"""Predicting image files with an exported model (SavedModel, ONNX, LiteRT, .keras): loading, batching by
size, CSV rows."""

from __future__ import annotations

import csv
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import numpy as np

from keras_digits.data.adapt import wants_digit
from keras_digits.data.folder import list_images, read_image
from keras_digits.errors import KerasDigitsError
from keras_digits.serving.model_files import config_path, resolve_model

CSV_COLUMNS = ("file", "label", "class_id", "confidence", "top_k")


SIGNATURE = "serving_default"


PROGRESS_MIN_FILES = 200  # --progress defaults to on for at least this many files when stderr is a terminal


BATCH_BYTES = 64 * 2**20  # decoded uint8 pixels per model call at most (the model works on float32 copies)


CHUNK_BYTES = 256 * 2**20  # decoded pixels held at once by predict_files


class NonFiniteOutput(KerasDigitsError):
    """The model returned NaN or inf probabilities."""


@dataclass
class Prediction:
    """One image's result."""

    file: Path
    probabilities: np.ndarray
    class_id: int
    label: str

    @property
    def confidence(self) -> float:
        return float(self.probabilities[self.class_id])

    def top_k(self, k: int) -> list[tuple[int, float]]:
        """The k most probable (class id, probability), best first (ties: lower id first)."""
        order = np.argsort(-self.probabilities, kind="stable")[:k]
        return [(int(i), float(self.probabilities[i])) for i in order]


def check_preprocess(model: str | os.PathLike, preprocess: str) -> None:
    """Refuse --preprocess none for a SavedModel exported with --preprocess digit: its signature normalises
    anyway (the file formats cannot carry the normalisation, so for them none is the caller's choice)."""
    fmt, path = resolve_model(model)
    if fmt != "saved_model":
        return
    if preprocess == "none" and read_export_config(path).get("preprocess") == "digit":
        raise KerasDigitsError(
            f"--preprocess none: {path} was exported with --preprocess digit, so its signature "
            "digit-normalises every image and cannot skip it; use --preprocess auto, or export the "
            "run again without --preprocess digit"
        )


def read_export_config(model: Path, fmt: str = "saved_model") -> dict:
    """The run config an export carries (assets/config.json, inside a SavedModel folder or beside a model
    file; a run's best.keras: the run's config.json); {} when absent or unreadable."""
    from keras_digits.utils.io import read_json_object

    return read_json_object(config_path(fmt, model), lenient=True)


class Predictor:
    """A loaded SavedModel's serving signature, or a .onnx / .tflite / .keras model file run by its own
    runtime (keras_digits.serving.model_files), fed lists of uint8 images of any sizes.

    `preprocess` (auto|digit|none, see keras_digits.data.adapt) decides whether images are digit-normalised
    (keras_digits.data.digit_norm, the same TF function export can put in the signature) first;
    `self.preprocess` is what is applied, `self.inkless` counts images without ink (only grey-scaled and
    resized), `self.notes` holds (file, note) for images read in a way worth saying (fully transparent).
    For a SavedModel whose signature normalises (exported with --preprocess digit) nothing more is applied;
    the commands refuse an explicit --preprocess none for it (`check_preprocess`). A model file exported
    with --preprocess digit cannot normalise itself: `auto` applies the normalisation here.
    `self.model_dir` is the SavedModel folder or the model file; `self.format` its format."""

    def __init__(self, model_dir: str | os.PathLike, preprocess: str = "auto"):
        self.format, self.model_dir = resolve_model(model_dir)
        self.config = read_export_config(self.model_dir, self.format)
        exported_digit = self.config.get("preprocess") == "digit"
        self.in_graph = exported_digit and self.format == "saved_model"  # the signature normalises already
        digit = wants_digit(preprocess, str(self.config.get("dataset", ""))) or (
            preprocess == "auto" and exported_digit
        )
        self.preprocess = "digit" if digit and not self.in_graph else "none"
        self.inkless = 0
        self.notes: list[tuple[Path, str]] = []
        if self.format != "saved_model":
            from keras_digits.serving.model_files import FileModel

            self._fn = FileModel(self.format, self.model_dir)
            self.num_classes = self._fn.num_classes
            return
        import tensorflow as tf

        try:
            self._loaded = tf.saved_model.load(str(self.model_dir))
        except Exception as exc:  # TF raises several types for a broken or foreign folder
            raise KerasDigitsError(
                f"cannot load SavedModel {self.model_dir}: {type(exc).__name__}: "
                f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
            ) from None
        signatures = self._loaded.signatures
        if SIGNATURE not in signatures:
            raise KerasDigitsError(
                f"{self.model_dir} has no {SIGNATURE!r} signature (has: {', '.join(signatures) or 'none'})"
            )
        self._fn = signatures[SIGNATURE]
        inputs = self._fn.structured_input_signature[1]
        if len(inputs) != 1:
            raise KerasDigitsError(f"{self.model_dir}: expected one image input, found {sorted(inputs)}")
        self._input_name, spec = next(iter(inputs.items()))
        if spec.dtype != tf.uint8:
            raise KerasDigitsError(
                f"{self.model_dir}: the {SIGNATURE} input is {spec.dtype.name}, expected uint8 "
                "images (export it with python -m keras_digits.export)"
            )
        outputs = self._fn.structured_outputs
        missing = {"probabilities", "class_id", "label"} - set(outputs)
        if missing:
            raise KerasDigitsError(f"{self.model_dir}: the {SIGNATURE} signature lacks output(s) {sorted(missing)}")
        self.num_classes = int(outputs["probabilities"].shape[-1])
        from keras_digits.utils.finite import describe_nonfinite, nonfinite_variables

        bad = nonfinite_variables(getattr(self._loaded, "variables", []))
        if bad:
            raise KerasDigitsError(
                f"{self.model_dir} holds non-finite values in {describe_nonfinite(bad)}: a diverged model; not used"
            )

    def predict_batch(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """(probabilities, class ids, labels) for a uint8 batch (N, H, W, C) of one size."""
        import tensorflow as tf

        batch = tf.constant(images, dtype=tf.uint8)
        inkless = 0
        if self.preprocess == "digit":
            from keras_digits.data.digit_norm import normalize_batch

            normalised, has_ink = normalize_batch(batch)
            inkless = int((~has_ink.numpy()).sum())
            batch = tf.cast(normalised, tf.uint8)
        if self.format == "saved_model":
            out = self._fn(**{self._input_name: batch})
            labels = [b.decode("utf-8", "replace") for b in out["label"].numpy()]
            probs, ids = out["probabilities"].numpy(), out["class_id"].numpy()
        else:
            probs, ids, labels = self._fn(batch)
        self.inkless += inkless  # counted once the batch went through (a failed batch is retried image by image)
        if not np.isfinite(probs).all():
            raise NonFiniteOutput(
                f"{self.model_dir} returned non-finite probabilities: the model is broken "
                "(a diverged training?); nothing predicted"
            )
        return probs, np.asarray(ids).astype(int), labels

    def predict_images(self, images: Sequence[np.ndarray], batch_size: int = 64):
        """Results for images of any sizes, in input order; same-shape images share batches.

        Yields (index, probabilities, class_id, label) or (index, exception) for an image the model
        refused (a batch that fails is retried one image at a time to find the culprit)."""
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, im in enumerate(images):
            groups.setdefault(im.shape, []).append(i)
        results: dict[int, tuple] = {}
        for idx in groups.values():
            step = max(1, min(batch_size, BATCH_BYTES // max(1, images[idx[0]].nbytes)))
            for start in range(0, len(idx), step):
                part = idx[start : start + step]
                try:
                    probs, ids, labels = self.predict_batch(np.stack([images[i] for i in part]))
                    for j, i in enumerate(part):
                        results[i] = (i, probs[j], int(ids[j]), labels[j])
                except NonFiniteOutput:
                    raise
                except Exception as exc:
                    for i in part:
                        try:
                            probs, ids, labels = self.predict_batch(images[i][None])
                            results[i] = (i, probs[0], int(ids[0]), labels[0])
                        except NonFiniteOutput:
                            raise
                        except Exception as single:
                            results[i] = (i, single if len(part) > 1 else exc)
        for i in range(len(images)):
            yield results[i]

    def predict_files(
        self,
        files: Sequence[Path],
        batch_size: int = 64,
        on_error: Callable[[Path, str], None] | None = None,
        progress: Progress | None = None,
    ) -> Iterator[Prediction]:
        """Decode and predict files chunk by chunk (memory stays bounded); bad files go to on_error."""
        chunk = max(batch_size * 4, 256)
        start = 0
        while start < len(files):
            paths, images, held = [], [], 0
            while start < len(files) and len(paths) < chunk and held < CHUNK_BYTES:
                path = files[start]
                start += 1
                notes: list[str] = []
                try:
                    images.append(decode_image(path, notes))
                    paths.append(path)
                    held += images[-1].nbytes
                except Exception as exc:
                    if on_error:
                        on_error(path, _reason(exc))
                    if progress:
                        progress.update(1)
                self.notes += [(path, note) for note in notes]
            for result in self.predict_images(images, batch_size):
                path = paths[result[0]]
                if progress:
                    progress.update(1)
                if len(result) == 2:
                    if on_error:
                        on_error(path, f"model error: {_reason(result[1])}")
                    continue
                _, probs, class_id, label = result
                yield Prediction(path, np.asarray(probs, dtype=np.float64), class_id, label)


def decode_image(path: Path, notes: list[str] | None = None) -> np.ndarray:
    """uint8 (H, W, 1) for grey images, (H, W, 3) for everything else, at the native size (reduced when
    longer than keras_digits.data.folder.MAX_SIDE); see read_image for transparency and `notes`."""
    return read_image(path, None, None, notes)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def find_images(paths: Iterable[str | os.PathLike]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Image files named by `paths` (folders searched recursively), and the non-image files found in folders.

    A file named explicitly is always tried, whatever its extension. A missing path is a usage error."""
    files: list[Path] = []
    skipped: list[tuple[Path, str]] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            images, others = list_images(path)
            files += images
            skipped += [(p, "not an image file (extension)") for p in others]
        elif path.is_file():
            files.append(path)
        else:
            raise KerasDigitsError(f"no such file or folder: {path}")
    seen: set[Path] = set()
    unique = []
    for f in files:
        key = Path(os.path.abspath(f))  # the same name given twice, not two names of one file (a link: its own row)
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique, skipped


class Progress:
    """A minimal stderr progress line (no keras, no tqdm): `predict 1234/5000 (25%) 310 img/s`, redrawn in place
    on a terminal; written to a file or pipe, one whole line every 10 s and at the end (no carriage returns)."""

    def __init__(self, total: int, stream: TextIO | None = None, label: str = "predict"):
        self.total, self.done, self.label = total, 0, label
        self.stream = stream or sys.stderr
        self.start = self._last = time.perf_counter()
        isatty = getattr(self.stream, "isatty", None)
        self.inplace = bool(isatty and isatty())

    def update(self, n: int) -> None:
        self.done += n
        now = time.perf_counter()
        if now - self._last >= (0.2 if self.inplace else 10.0) or self.done >= self.total:
            self._last = now
            rate = self.done / max(now - self.start, 1e-9)
            pct = 100 * self.done / max(self.total, 1)
            line = f"{self.label} {self.done}/{self.total} ({pct:.0f}%) {rate:.0f} img/s"
            self.stream.write(f"\r{line}" if self.inplace else f"{line}\n")
            self.stream.flush()

    def close(self) -> None:
        if self.inplace:
            self.stream.write("\n")
            self.stream.flush()


def make_progress(total: int, wanted: bool | None = None, label: str = "predict") -> Progress | None:
    """A progress line when asked (`wanted`), or by default when stderr is a terminal and there are at
    least PROGRESS_MIN_FILES files; None otherwise."""
    show = wanted if wanted is not None else (sys.stderr.isatty() and total >= PROGRESS_MIN_FILES)
    return Progress(total, label=label) if show and total else None


def report_inkless(predictor: Predictor) -> None:
    """Name the images read in a noteworthy way (the first 10) and count those without ink, on stderr."""
    print_read_notes(predictor.notes, predictor.inkless, most=10)


def print_read_notes(notes: Sequence[tuple[Path, str]], inkless: int, most: int | None = None) -> None:
    """On stderr: a line per image read in a noteworthy way (at most `most`, then how many more), and how many
    had no ink to digit-normalise."""
    shown = notes if most is None else notes[:most]
    for path, note in shown:
        print(f"note: {path}: {note}", file=sys.stderr)
    if len(notes) > len(shown):
        print(f"note: ... and {len(notes) - len(shown)} more such note(s)", file=sys.stderr)
    if inkless:
        print(
            f"warning: {inkless} image(s) had no ink to normalise (blank or uniform); they were "
            "only grey-scaled and resized",
            file=sys.stderr,
        )


def format_row(pred: Prediction, k: int) -> list[str]:
    """One CSV row in CSV_COLUMNS order."""
    top = ";".join(f"{cid}:{p:.4f}" for cid, p in pred.top_k(k))
    return [str(pred.file), pred.label, str(pred.class_id), f"{pred.confidence:.6f}", top]


def write_predictions(predictions: Iterable[Prediction], out: TextIO, k: int) -> int:
    """Write the CSV header and rows; returns the number of rows."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    n = 0
    for pred in predictions:
        writer.writerow(format_row(pred, k))
        n += 1
    return n
