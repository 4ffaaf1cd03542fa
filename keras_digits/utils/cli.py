"""Shared CLI plumbing: one clear line and exit code 2 for user errors, quiet TensorFlow logs, a quiet
`interrupted` (exit code 130) for Ctrl-C at any point of a command, its start-up imports included."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable, Sequence  # (not typing: a slower import, and cli is imported first)

from keras_digits.errors import KerasDigitsError

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def _interrupted_at_start(signum: int, frame: object) -> None:
    """SIGINT before run_cli took over (module imports): say so and exit 130, no KeyboardInterrupt traceback."""
    # Exit at once: an exception raised here would surface inside whichever import was running, and a C
    # extension's (numpy's) turns it into a long ImportError; before run_cli nothing has been written.
    os.write(2, b"interrupted\n")
    os._exit(EXIT_INTERRUPTED)


def quiet_interrupts_at_start() -> None:
    """For `python -m keras_digits.X` (keras_digits/__init__ calls it): until run_cli starts, Ctrl-C prints
    `interrupted` and exits 130 instead of a traceback from whichever import it hit."""
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # leave a handler someone else set
        try:
            signal.signal(signal.SIGINT, _interrupted_at_start)
        except ValueError:  # not the main thread
            pass


def _default_interrupts() -> None:
    """From here on Ctrl-C raises KeyboardInterrupt again (run_cli reports it after the command's cleanups)."""
    if signal.getsignal(signal.SIGINT) is _interrupted_at_start:
        signal.signal(signal.SIGINT, signal.default_int_handler)


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


def quiet_retracing_warnings() -> None:
    """Many short model calls or trainings in one process (a sweep, corruptions, explanation methods) make
    TensorFlow warn about tf.function retracing; that is expected there, so its Python warnings are hidden."""
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")


def run_cli(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> int:
    """Run a CLI main; turn KerasDigitsError into `error: ...` on stderr and exit code 2."""
    import warnings

    warnings.filterwarnings("ignore", message=".*`shuffle=True` was passed.*")
    try:
        _default_interrupts()  # inside the try: a Ctrl-C from here on is the `except KeyboardInterrupt` below
        quiet_tensorflow()
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
        print(
            "error: out of memory on the device (ResourceExhaustedError); lower --batch-size or --image-size",
            file=sys.stderr,
        )
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
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
