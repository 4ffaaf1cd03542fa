"""Proving an exported file with its own runtime, in a fresh process that cannot import keras_digits.

The source of keras_digits/serving/runtimes.py (and a call of its main) runs as
`python -c SOURCE FORMAT MODEL IN.npz OUT.npz` in a temporary working folder (so nothing of this
checkout is on its path), with an import hook that refuses keras_digits; it writes the probabilities
it computed and one JSON line about itself. The comparisons (probabilities against the Keras model's,
or accuracy on a labelled split) happen here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from keras_digits.errors import KerasDigitsError

EXAMPLE_SPLITS = ("test", "val")  # whose stored examples (examples-SPLIT.npz) the float formats are checked on
RANDOM_IMAGES = 64  # seeded random images added to them: away from 0 and 1, probabilities show differences
DEFAULT_TOLERANCE = 1e-4  # largest |difference| of a probability accepted for a float32 format
DEFAULT_MAX_DROP = 0.01  # largest accuracy loss (a fraction: 1 point) accepted for a quantized format
TIMEOUT_S = 3600


class ProofFailed(KerasDigitsError):
    """An exported file gave other results than the Keras model (exit code 1)."""

    exit_code = 1


def check_images(run_dir: Path, shape: tuple[int, ...], seed: int = 0) -> tuple[np.ndarray, str]:
    """The images the float formats are checked on, and what they are: the run's stored examples
    (examples-test.npz, else examples-val.npz; the confident mistakes and correct images its page shows)
    and RANDOM_IMAGES seeded random uint8 images (a trained model's probabilities on its own examples sit
    near 0 and 1, where a wrong conversion hardly shows; on noise they do not)."""
    import zipfile

    parts, what = [], []
    for split in EXAMPLE_SPLITS:
        path = Path(run_dir) / f"examples-{split}.npz"
        if not path.is_file():
            continue
        try:
            with np.load(path, allow_pickle=False) as data:
                images = np.asarray(data["images"]) if "images" in data.files else np.zeros((0,))
        except (OSError, ValueError, zipfile.BadZipFile) as exc:
            raise KerasDigitsError(f"cannot read {path}: {exc}") from None
        if images.ndim == 4 and tuple(images.shape[1:]) == tuple(shape) and len(images):
            parts.append(images.astype(np.uint8))
            what.append(f"the run's {len(images)} stored {split} examples")
            break
    rng = np.random.default_rng([seed, 2718])
    parts.append(rng.integers(0, 256, (RANDOM_IMAGES, *shape), dtype=np.uint8))
    what.append(f"{RANDOM_IMAGES} seeded random images")
    return np.concatenate(parts), " and ".join(what)


def runtime_source() -> str:
    """runtimes.py's source and a call of its main on the command line's arguments."""
    source = Path(__file__).with_name("runtimes.py").read_text(encoding="utf-8")
    return source + "\n\nimport sys as _sys\n\n_sys.exit(main(_sys.argv[1:]))\n"


def run_fresh(kind: str, model_path: Path, images: np.ndarray, batch: int = 64) -> tuple[np.ndarray, dict]:
    """(probabilities, the child's report) of `images` (uint8) through `kind`'s runtime in a fresh process."""
    with tempfile.TemporaryDirectory(prefix="keras_digits-proof-") as tmp:
        tmp_path = Path(tmp)
        inputs, outputs = tmp_path / "in.npz", tmp_path / "out.npz"
        np.savez(inputs, images=np.ascontiguousarray(images, dtype=np.uint8))
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        cmd = [sys.executable, "-c", runtime_source(), kind, str(Path(model_path).resolve()), str(inputs), str(outputs)]
        try:
            done = subprocess.run(
                [*cmd, str(batch)], cwd=tmp, env=env, capture_output=True, text=True, timeout=TIMEOUT_S
            )
        except subprocess.TimeoutExpired:
            raise ProofFailed(f"{kind}: the runtime check took longer than {TIMEOUT_S} s") from None
        if done.returncode != 0:
            tail = [line for line in done.stderr.strip().splitlines() if line.strip()][-1:] or ["no message"]
            raise ProofFailed(
                f"{kind}: its runtime could not run {Path(model_path).name} in a fresh process: {tail[0]}"
            )
        report = _last_json(done.stdout)
        with np.load(outputs, allow_pickle=False) as data:
            probs = np.asarray(data["probabilities"], dtype=np.float32)
    if report.get("keras_digits_imported"):
        raise ProofFailed(f"{kind}: the fresh process imported keras_digits")
    if probs.shape[0] != len(images):
        raise ProofFailed(f"{kind}: {probs.shape[0]} results for {len(images)} images")
    return probs, report


def _last_json(text: str) -> dict:
    for line in reversed(text.strip().splitlines()):
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return {}


def compare(kind: str, probs: np.ndarray, reference: np.ndarray, tolerance: float, what: str) -> dict:
    """The check record of probabilities against the Keras model's; ProofFailed beyond `tolerance`."""
    if probs.shape != reference.shape:
        raise ProofFailed(f"{kind}: probabilities of shape {probs.shape}, the Keras model's are {reference.shape}")
    if not np.isfinite(probs).all():
        raise ProofFailed(f"{kind}: the runtime returned non-finite probabilities on {what}")
    diff = float(np.abs(probs.astype(np.float64) - reference).max()) if probs.size else 0.0
    record = {
        "on": what,
        "images": int(len(probs)),
        "max_abs_diff": diff,
        "tolerance": tolerance,
        "same_class": int((probs.argmax(-1) == reference.argmax(-1)).sum()) if probs.size else 0,
        "passed": diff <= tolerance,
    }
    if not record["passed"]:
        raise ProofFailed(
            f"{kind}: probabilities differ from the Keras model's by up to {diff:.3g} on {what} "
            f"(tolerance {tolerance:g}); nothing written"
        )
    return record


def accuracy_change(kind: str, probs: np.ndarray, y: np.ndarray, keras_accuracy: float, max_drop: float) -> dict:
    """The check record of a quantized model's accuracy on a labelled split; ProofFailed when it drops by more
    than `max_drop` (a fraction) below the Keras model's."""
    accuracy = float((probs.argmax(-1) == y).mean()) if len(y) else 0.0
    record = {
        "on": "the run's test split",
        "images": int(len(y)),
        "keras_accuracy": keras_accuracy,
        "accuracy": accuracy,
        "change": accuracy - keras_accuracy,
        "max_drop": max_drop,
        "passed": keras_accuracy - accuracy <= max_drop + 1e-12,
    }
    if not record["passed"]:
        raise ProofFailed(
            f"{kind}: test accuracy {accuracy:.4f} against the Keras model's {keras_accuracy:.4f}, a drop of "
            f"{100 * (keras_accuracy - accuracy):.2f} points (limit {100 * max_drop:.2f}); nothing written"
        )
    return record
