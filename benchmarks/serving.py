"""Serving speed of an exported SavedModel on CPU: single-image latency and batch throughput.

    python benchmarks/serving.py [--model saved_models/NAME/1] [--batch 256] [--runs 200] [--image-size 28]

Without --model, a fresh untrained simple_cnn for 28x28x1 inputs is exported to a temporary folder
first (weights do not change the speed). Calls the `serving_default` signature (uint8 in, resize and
channel conversion inside the graph) through tf.saved_model.load, as keras_digits.predict does, and
prints:

    latency (1 image)     p50 / p90 / mean in ms over --runs calls, after --warmup calls
    throughput (batch N)  images/s over --batch-runs calls of a batch of N

--image-size / --channels set the size of the fed images: a size other than the model's input
measures the in-graph resize too. Figures, not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def export_untrained(tmp: Path) -> Path:
    """Export an untrained simple_cnn (28x28x1, 10 classes) into tmp; returns the version folder."""
    from keras_digits.models import build_model
    from keras_digits.serving.export import export_model

    model = build_model("simple_cnn", (28, 28, 1), 10)
    return export_model(model, tmp / "simple_cnn" / "1", [str(i) for i in range(10)], config={"arch": "simple_cnn"})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python benchmarks/serving.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
    )
    p.add_argument("--model", help="SavedModel folder (default: export an untrained simple_cnn to a temp folder)")
    p.add_argument("--batch", type=int, default=256, help="batch size for the throughput figure (default 256)")
    p.add_argument("--runs", type=int, default=200, help="single-image calls timed (default 200)")
    p.add_argument("--batch-runs", type=int, default=20, help="batch calls timed (default 20)")
    p.add_argument("--warmup", type=int, default=10, help="untimed calls first (default 10)")
    p.add_argument("--image-size", type=int, help="height and width of the fed images (default: the model's)")
    p.add_argument("--channels", type=int, help="channels of the fed images (default: the model's)")
    p.add_argument("--threads", type=int, help="TF intra/inter-op threads (default: TensorFlow's choice)")
    args = p.parse_args(argv)

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        if args.model:
            from keras_digits.serving.predictor import resolve_model_dir

            model_dir = resolve_model_dir(args.model)
        else:
            start = time.perf_counter()
            model_dir = export_untrained(Path(tmp))
            print(f"exported an untrained simple_cnn to a temp folder in {time.perf_counter() - start:.1f} s")
        start = time.perf_counter()
        loaded = tf.saved_model.load(str(model_dir))
        fn = loaded.signatures["serving_default"]
        print(f"loaded {model_dir if args.model else 'simple_cnn'} in {time.perf_counter() - start:.2f} s")
        h, w, c = (int(d) for d in loaded.signatures["serve_float"].structured_input_signature[1]["images"].shape[1:])
        size = (args.image_size or h, args.image_size or w, args.channels or c)
        rng = np.random.default_rng(0)
        one = tf.constant(rng.integers(0, 256, (1, *size), dtype=np.uint8))
        batch = tf.constant(rng.integers(0, 256, (args.batch, *size), dtype=np.uint8))

        for _ in range(args.warmup):
            fn(images=one)["probabilities"].numpy()
        times = []
        for _ in range(args.runs):
            t0 = time.perf_counter()
            fn(images=one)["probabilities"].numpy()
            times.append((time.perf_counter() - t0) * 1000)
        times = np.asarray(times)

        for _ in range(max(1, args.warmup // 5)):
            fn(images=batch)["probabilities"].numpy()
        t0 = time.perf_counter()
        for _ in range(args.batch_runs):
            fn(images=batch)["probabilities"].numpy()
        batch_s = time.perf_counter() - t0

    print(f"input {size[0]}x{size[1]}x{size[2]} uint8 -> model {h}x{w}x{c}; CPU, {os.cpu_count()} logical cores")
    print(
        f"latency (1 image, {args.runs} calls): p50 {np.percentile(times, 50):.2f} ms, "
        f"p90 {np.percentile(times, 90):.2f} ms, mean {times.mean():.2f} ms"
    )
    print(
        f"throughput (batch {args.batch}, {args.batch_runs} calls): "
        f"{args.batch * args.batch_runs / batch_s:,.0f} images/s ({batch_s / args.batch_runs * 1000:.1f} ms/batch)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
