"""TensorFlow's convolution against the project Conv2D's matrix-product paths, per ResNet-18 stage.

    python benchmarks/conv_paths.py [--batch 64] [--dtype bfloat16|float32] [--repeats 20]

For each convolution shape of ResNet-18 at 28 px (the 3x3 stride-1 convolutions of each stage, the
3x3 stride-2 stage entries and their 1x1 stride-2 projections), times the forward pass and forward +
both gradients with `tf.nn.conv2d` (what Keras' Conv2D runs) and with
`keras_digits.models.smallconv.small_map_conv` (the layer's paths), on this machine, in one run, and
prints milliseconds and the ratio. Where the layer keeps TensorFlow's forward pass (maps over 4x4,
strided convolutions) its column says so; where it keeps TensorFlow's kernels altogether the row
says so. It also prints up to which map size this machine takes the paths under the given policy (7x7 in
bfloat16 on an AMX-BF16 CPU, 4x4 in float32 on AVX2 kernels, none elsewhere): elsewhere the table
shows what taking them would cost.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CASES = [  # (map size in, channels in, channels out, kernel, stride), in the network's order
    (28, 64, 64, 3, 1),
    (28, 64, 128, 3, 2),
    (28, 64, 128, 1, 2),
    (14, 128, 128, 3, 1),
    (14, 128, 256, 3, 2),
    (14, 128, 256, 1, 2),
    (7, 256, 256, 3, 1),
    (7, 256, 512, 3, 2),
    (7, 256, 512, 1, 2),
    (4, 512, 512, 3, 1),
]


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

    from keras_digits.models import smallconv
    from keras_digits.runtime import precision

    dtype = tf.as_dtype(args.dtype)
    flags = precision.cpu_flags()
    print(
        f"CPU bfloat16 feature: {precision.cpu_bf16_feature(flags) or 'none'}; "
        f"paths taken under a {args.dtype} policy here: maps up to {smallconv.matmul_max_area(args.dtype)} positions"
    )
    print(f"batch {args.batch}, {args.dtype}, mean of {args.repeats} calls (ms)")
    print(
        f"{'map':>10} {'kernel':>6} {'stride':>6} {'fwd tf':>8} {'fwd ours':>9} {'fwd+bwd tf':>11} "
        f"{'fwd+bwd ours':>13} {'ratio':>6}"
    )
    for size, cin, cout, k, stride in CASES:
        rng = tf.random.Generator.from_seed(size * cin + k)
        x = tf.cast(rng.normal([args.batch, size, size, cin]), dtype)
        w = tf.cast(rng.normal([k, k, cin, cout]) * 0.05, dtype)

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
        head = f"{f'{size}x{size}x{cin}':>10} {f'{k}x{k}':>6} {stride:>6}"
        if out * out > smallconv.WGRAD_MAX_AREA:
            fwd, step = (_timed(f, (x, w), args.repeats) for f in (tf_fwd, tf_step))
            print(f"{head} {fwd:8.2f} {'-':>9} {step:11.2f} {'-':>13} {'':>6}  TensorFlow's kernels kept")
            continue
        same_forward = out * out > smallconv.MATMUL_MAX_AREA or stride != 1
        fwd_tf = _timed(tf_fwd, (x, w), args.repeats)
        fwd_ours = "same" if same_forward else f"{_timed(our_fwd, (x, w), args.repeats):.2f}"
        step_tf, step_ours = (_timed(f, (x, w), args.repeats) for f in (tf_step, our_step))
        print(
            f"{head} {fwd_tf:8.2f} {fwd_ours:>9} {step_tf:11.2f} {step_ours:13.2f} {step_tf / step_ours:5.2f}x"
            + ("  (weight gradient only)" if same_forward else "")
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
