"""The architecture table of docs/training.md: parameters, FLOPs per image and training images/s on this machine.

    python benchmarks/model_table.py                       # every registered arch, (28,28,1) input, 10 classes
    python benchmarks/model_table.py --archs simple_cnn resnet18 --shape 28,28,3 --steps 30

Each arch runs at its default working resolution (the registry's default_size, else the input's).
FLOPs are TensorFlow profiler float operations of one forward pass for one image (a multiply-add
counts 2). Images/s is steady-state training throughput (after warm-up) at --batch-size.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from keras_digits.utils.cli import quiet_tensorflow


def forward_flops(model, input_shape) -> int | None:
    """Float operations of one forward pass on one image, from the TF profiler."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    fn = tf.function(lambda x: model(x, training=False))
    concrete = fn.get_concrete_function(tf.TensorSpec((1, *input_shape), tf.float32))
    frozen = convert_variables_to_constants_v2(concrete)
    with tf.Graph().as_default() as graph:
        tf.graph_util.import_graph_def(frozen.graph.as_graph_def(), name="")
        opts = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
        opts["output"] = "none"
        info = tf.compat.v1.profiler.profile(graph=graph, run_meta=tf.compat.v1.RunMetadata(), cmd="op", options=opts)
    return int(info.total_float_ops) if info is not None else None


def train_speed(model, input_shape, classes: int, batch: int, steps: int, warmup: int) -> float:
    from keras_digits.config import TrainConfig
    from keras_digits.training.setup import compile_model

    compile_model(model, TrainConfig())
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(batch, *input_shape), dtype=np.uint8).astype("float32")
    y = rng.integers(0, classes, size=batch)
    for _ in range(warmup):
        model.train_on_batch(x, y)
    t0 = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(x, y)
    return steps * batch / (time.perf_counter() - t0)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--archs", nargs="*", help="default: every registered arch")
    p.add_argument("--shape", default="28,28,1", help="raw input shape H,W,C")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    args = p.parse_args()
    quiet_tensorflow()
    import keras

    from keras_digits.models import build_model, list_models
    from keras_digits.models.registry import resolve_image_size

    shape = tuple(int(s) for s in args.shape.split(","))
    print(f"input {shape}, {args.classes} classes, batch {args.batch_size}\n")
    print("| arch | image size | parameters | trainable | MFLOPs / image | train images/s |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name in args.archs or list_models():
        keras.backend.clear_session()
        size = resolve_image_size(name, shape)
        model = build_model(name, shape, args.classes)
        trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
        flops = forward_flops(model, shape)
        ips = train_speed(model, shape, args.classes, args.batch_size, args.steps, args.warmup)
        mflops = f"{flops / 1e6:,.1f}" if flops else "n/a"
        print(f"| `{name}` | {size} | {model.count_params():,} | {trainable:,} | {mflops} | {ips:,.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
