"""Shared CLI plumbing: one clear line and exit code 2 for user errors, quiet TensorFlow logs."""

from __future__ import annotations

import os
import sys
from typing import Callable, Sequence

from keras_digits.errors import KerasDigitsError

EXIT_USER_ERROR = 2


def quiet_tensorflow() -> None:
    """Import TensorFlow with its C++ start-up chatter silenced (KERAS_DIGITS_TF_LOGS=1 shows it)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if os.environ.get("KERAS_DIGITS_TF_LOGS") or "tensorflow" in sys.modules:
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import tensorflow as tf

        tf.config.list_physical_devices()  # device probing logs (no CUDA driver...) happen here
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def run_cli(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> int:
    """Run a CLI main; turn KerasDigitsError into `error: ...` on stderr and exit code 2."""
    import warnings

    warnings.filterwarnings("ignore", message=".*`shuffle=True` was passed.*")
    quiet_tensorflow()
    try:
        code = main(argv)
    except KerasDigitsError as exc:
        print(f"error: {one_line(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:
        if exc.filename is None:  # not a path problem: a bug or a system failure, keep the traceback
            raise
        print(f"error: {path_error(exc)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except MemoryError:
        print("error: out of memory; lower --batch-size or --image-size", file=sys.stderr)
        return EXIT_USER_ERROR
    except Exception as exc:  # TensorFlow's out-of-memory (a GPU's, typically) without importing TF here
        if type(exc).__name__ != "ResourceExhaustedError":
            raise
        print("error: out of memory on the device (ResourceExhaustedError); lower --batch-size or --image-size",
              file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(code or 0)


def one_line(text: str) -> str:
    """A message folded onto one line."""
    return " ".join(text.split()) if "\n" in text else text


def path_error(exc: OSError) -> str:
    """'cannot write PATH: Permission denied' for an OSError about a path."""
    reason = exc.strerror or type(exc).__name__
    target = f"{exc.filename}" + (f" -> {exc.filename2}" if getattr(exc, "filename2", None) else "")
    return f"cannot use {target}: {reason}"


def positive_int(text: str) -> int:
    """argparse type: an integer > 0."""
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a float > 0."""
    import argparse

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be positive and finite, got {text}")
    return value


def fraction(text: str) -> float:
    """argparse type: a float in [0, 1)."""
    import argparse

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value
