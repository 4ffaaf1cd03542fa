"""TensorFlow's convolution against SmallMapConv2D's matrix-product paths, per ResNet-18 stage.

    python benchmarks/conv_paths.py [--batch 64] [--dtype bfloat16|float32] [--repeats 20]

For each 3x3 stride-1 convolution of ResNet-18 at 28 px (28x28x64, 14x14x128, 7x7x256, 4x4x512) and
the stage-4 stride-2 entry (7x7x256 -> 4x4x512), times the forward pass and forward + both gradients
with `tf.nn.conv2d` (what Keras' Conv2D runs) and with `keras_digits.models.smallconv.small_map_conv`
(matrix products where the output map is small; TensorFlow's kernels elsewhere), on this machine, in
one run, and prints milliseconds and the ratio. It also prints whether this machine takes the paths
under a bfloat16 policy (AMX-BF16 CPU, no GPU): the layer takes them only where they pay, so on other
machines this table shows what it would cost to take them.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CASES = [  # (map size in, channels in, channels out, stride)
    (28, 64, 64, 1), (14, 128, 128, 1), (7, 256, 256, 1), (7, 256, 512, 2), (4, 512, 512, 1)]


def _timed(fn, args, repeats):
    for _ in range(3):
        out = fn(*args)
    start = time.perf_counter()
    for _ in range(repeats):
        out = fn(*args)
    [o.numpy() for o in (out if isinstance(out, (list, tuple)) else [out])]
    return (time.perf_counter() - start) / repeats * 1000


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16")
    p.add_argument("--repeats", type=int, default=20)
    args = p.parse_args(argv)

    import tensorflow as tf

    from keras_digits import precision
    from keras_digits.models import smallconv

    dtype = tf.as_dtype(args.dtype)
    flags = precision.cpu_flags()
    print(f"CPU bfloat16 feature: {precision.cpu_bf16_feature(flags) or 'none'}; "
          f"paths taken under a {args.dtype} policy here: {smallconv.matmul_paths_pay(args.dtype)}")
    print(f"batch {args.batch}, {args.dtype}, mean of {args.repeats} calls (ms)")
    print(f"{'map':>10} {'stride':>6} {'fwd tf':>8} {'fwd ours':>9} {'fwd+bwd tf':>11} {'fwd+bwd ours':>13} {'ratio':>6}")
    for size, cin, cout, stride in CASES:
        rng = tf.random.Generator.from_seed(size * cin)
        x = tf.cast(rng.normal([args.batch, size, size, cin]), dtype)
        w = tf.cast(rng.normal([3, 3, cin, cout]) * 0.05, dtype)

        def both(conv):
            @tf.function
            def fwd(x, w):
                return conv(x, w)

            @tf.function
            def step(x, w):
                with tf.GradientTape() as tape:
                    tape.watch([x, w])
                    y = conv(x, w)
                    loss = tf.reduce_sum(tf.cast(y, tf.float32) ** 2)
                return tape.gradient(loss, [x, w])
            return fwd, step

        tf_fwd, tf_step = both(lambda x, w: tf.nn.conv2d(x, w, [1, stride, stride, 1], "SAME"))
        our_fwd, our_step = both(lambda x, w: smallconv.small_map_conv(x, w, (stride, stride), "same"))
        out = -(-size // stride)
        name = f"{size}x{size}x{cin}"
        if out * out > smallconv.WGRAD_MAX_AREA:
            fwd, step = (_timed(f, (x, w), args.repeats) for f in (tf_fwd, tf_step))
            print(f"{name:>10} {stride:>6} {fwd:8.2f} {'-':>9} {step:11.2f} {'-':>13} {'':>6}  the layer keeps "
                  "TensorFlow's kernels")
            continue
        times = [_timed(f, (x, w), args.repeats) for f in (tf_fwd, our_fwd, tf_step, our_step)]
        print(f"{name:>10} {stride:>6} {times[0]:8.2f} {times[1]:9.2f} {times[2]:11.2f} {times[3]:13.2f} "
              f"{times[2] / times[3]:5.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
