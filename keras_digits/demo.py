"""A local demo page: draw or drop a digit, see the prediction, the input as the model sees it and why.

    python -m keras_digits.demo --run runs/digits-simple_cnn-s42
    python -m keras_digits.demo --model saved_models/NAME        (an export holding model.keras)
                                [--host 127.0.0.1] [--port 7860] [--top-k 3]

Serves a Gradio page on the loopback address (--host 0.0.0.0 to let other machines in; there is no
login, so only on a network you trust), offline: nothing is fetched from the internet. The page has
a sketchpad and an upload box; shows each step of the digit normalisation (for models trained on
digits; --preprocess auto|digit|none on the page), the top classes, and an explanation overlay
(Grad-CAM, saliency, Integrated Gradients or occlusion; with a contrast class, "why 4 and not 9"),
with the time each took; and the run's stored test examples, its most confident mistakes first.
Needs the demo extra: pip install -e '.[demo]' (in the keras_digits checkout; .[dev] includes it).
Stop it with Ctrl-C.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from keras_digits.errors import KerasDigitsError
from keras_digits.utils.cli import positive_int, run_cli


def _port(text: str) -> int:
    value = positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"a port is 1-65535, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m keras_digits.demo",
        description="A local demo page (Gradio, offline): draw or drop a digit, see the prediction, the "
        "input as the model sees it, and an explanation overlay.",
    )
    p.add_argument("--run", help="a finished run directory (its best.keras, labels and test examples)")
    p.add_argument(
        "--model", help="an export folder holding model.keras (export --format keras or all), or a .keras file"
    )
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=_port, default=7860, help="port, 1-65535 (default 7860)")
    p.add_argument("--top-k", type=positive_int, default=3, help="classes listed with their probabilities (default 3)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.run and not args.model:
        raise KerasDigitsError("name a model: --run RUN or --model saved_models/NAME")
    if importlib.util.find_spec("gradio") is None:
        raise KerasDigitsError(
            "the demo needs gradio, not installed: pip install -e '.[demo]' in the keras_digits checkout"
        )
    from keras_digits.app.engine import load
    from keras_digits.app.page import serve

    demo = load(args.run, args.model)
    with tempfile.TemporaryDirectory(prefix="keras_digits-demo-") as tmp:
        serve(demo, Path(tmp), args.host, args.port, args.top_k)  # until Ctrl-C (run_cli: interrupted, 130)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
