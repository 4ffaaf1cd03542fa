"""How fast the demo page answers: one drawn digit -> prediction + explanation overlay, per method.

    python benchmarks/demo_latency.py --run runs/digits-simple_cnn-s42 [--repeats 20]

Times keras_digits.app.engine's DemoModel.answer (what the page's handler calls: the digit
normalisation's steps, the prediction, the explanation and the overlay picture) on synthetic drawn
digits (strokes on a transparent 280x280 canvas, as the sketchpad sends them), after one untimed warm-up
per method (the first call traces TensorFlow functions). Prints the median and 90th percentile of the
whole answer and of its prediction and explanation parts, per method, with the CPU's name and ISA.
Gradio's own round trip (browser -> server -> browser) comes on top and is not timed here. Figures,
not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def drawn_digits(side: int = 280) -> list[np.ndarray]:
    """Black strokes on a transparent canvas: a 1, a 7, a 0 and a 4."""
    from PIL import Image, ImageDraw

    ink = (0, 0, 0, 255)
    shapes = [
        lambda d: d.line([(140, 40), (140, 240)], fill=ink, width=18),
        lambda d: (
            d.line([(80, 50), (200, 50)], fill=ink, width=18),
            d.line([(200, 50), (120, 240)], fill=ink, width=18),
        ),
        lambda d: d.ellipse([90, 50, 190, 230], outline=ink, width=18),
        lambda d: (
            d.line([(160, 40), (80, 170)], fill=ink, width=18),
            d.line([(80, 170), (210, 170)], fill=ink, width=18),
            d.line([(170, 110), (170, 240)], fill=ink, width=18),
        ),
    ]
    out = []
    for draw in shapes:
        im = Image.new("RGBA", (side, side), (0, 0, 0, 0))
        draw(ImageDraw.Draw(im))
        out.append(np.asarray(im))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python benchmarks/demo_latency.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
    )
    p.add_argument("--run", help="a finished run directory")
    p.add_argument("--model", help="or an export folder holding model.keras")
    p.add_argument("--repeats", type=int, default=20, help="answers timed per method (default 20, at least 1)")
    p.add_argument("--methods", default="gradcam,saliency,ig,occlusion", help="methods, comma-separated")
    args = p.parse_args(argv)
    if not args.run and not args.model:
        p.error("name --run or --model")
    if args.repeats < 1:
        p.error("--repeats must be at least 1")

    from keras_digits.utils.cli import quiet_tensorflow

    quiet_tensorflow()
    from keras_digits.app.engine import load, read_sketch
    from keras_digits.runtime.precision import cpu_isa, cpu_name

    demo = load(args.run, args.model)
    images = [read_sketch({"composite": c}) for c in drawn_digits()]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    print(f"model {demo.source} ({demo.dataset}, input {'x'.join(map(str, demo.shape))})")
    print(f"CPU: {cpu_name()}; ISA {cpu_isa()}; {os.cpu_count()} logical cores\n")
    print("| method | answer p50 ms | answer p90 ms | predict p50 ms | explain p50 ms |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for method in methods:
        demo.answer(images[0], "auto", method)  # warm-up: traces the functions
        total, pred, expl = [], [], []
        for i in range(args.repeats):
            start = time.perf_counter()
            answer = demo.answer(images[i % len(images)], "auto", method)
            total.append(1000 * (time.perf_counter() - start))
            pred.append(answer.predict_ms)
            expl.append(answer.explain_ms)
        print(
            f"| {method} | {np.median(total):.0f} | {np.percentile(total, 90):.0f} | "
            f"{np.median(pred):.1f} | {np.median(expl):.1f} |"
        )
    print(f"\n[{cpu_isa().split(' ')[0]}] {args.repeats} answers per method after one warm-up")
    return 0


if __name__ == "__main__":
    sys.exit(main())
