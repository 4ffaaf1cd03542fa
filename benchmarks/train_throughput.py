"""Training throughput, peak memory and time-to-accuracy for one arch, batch size and dataset shape.

    python benchmarks/train_throughput.py --arch simple_cnn --batch-size 32 --dataset mnist --data-dir ../shared/data
    python benchmarks/train_throughput.py --arch resnet18 --shape 28,28,3 --classes 9     # synthetic data
    python benchmarks/train_throughput.py --arch simple_cnn --dataset mnist --data-dir ../shared/data \
        --target-accuracy 0.99 --max-epochs 5

Prints steady-state training images/s (after warm-up) for the project's pipeline (uint8 tf.data
batches, raw pixels into the model) and, with --baseline, for a plain Keras `fit` on a float32
NumPy copy (the way the notebooks did it); peak RSS; and with --target-accuracy the wall time until
MNIST test accuracy first reaches the target (a benchmark criterion only: nothing is selected on it).
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from keras_digits.cli import quiet_tensorflow  # noqa: E402


def peak_rss_mb() -> float:
    """Peak resident memory of this process, MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def get_data(args):
    if args.dataset:
        from keras_digits.data import load_dataset

        b = load_dataset(args.dataset, args.data_dir, max_train_samples=args.max_train_samples)
        return b.train, b.test, b.num_classes
    shape = tuple(int(s) for s in args.shape.split(","))
    rng = np.random.default_rng(0)
    n = args.batch_size * (args.steps + args.warmup)
    x = rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)
    y = rng.integers(0, args.classes, size=n).astype(np.int32)
    return (x, y), (x[:256], y[:256]), args.classes


def measure(model, ds, steps: int, warmup: int) -> float:
    """Images/s over `steps` batches after `warmup` batches, timed per batch inside fit."""
    import keras

    class Timer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.t0 = None
            self.images = 0

        def on_train_batch_begin(self, batch, logs=None):
            if batch == warmup:
                self.t0 = time.perf_counter()

        def on_train_end(self, logs=None):
            self.elapsed = time.perf_counter() - self.t0

    timer = Timer()
    model.fit(ds, epochs=1, steps_per_epoch=steps + warmup, verbose=0, callbacks=[timer])
    return timer.elapsed


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="simple_cnn")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--dataset", help="a registered dataset (default: synthetic data of --shape)")
    p.add_argument("--data-dir")
    p.add_argument("--shape", default="28,28,1", help="synthetic image shape H,W,C")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--image-size", type=int, help="model working resolution (default: per arch)")
    p.add_argument("--steps", type=int, default=300, help="timed steps")
    p.add_argument("--warmup", type=int, default=50, help="untimed steps first")
    p.add_argument("--max-train-samples", type=int)
    p.add_argument("--baseline", action="store_true", help="also time a plain Keras fit on float32 NumPy arrays")
    p.add_argument("--target-accuracy", type=float, help="train until test accuracy reaches this (MNIST)")
    p.add_argument("--max-epochs", type=int, default=15)
    args = p.parse_args()

    quiet_tensorflow()
    import keras
    import tensorflow as tf

    from keras_digits.config import TrainConfig
    from keras_digits.data.pipeline import make_pipeline
    from keras_digits.models import build_model
    from keras_digits.train import compile_model

    (x, y), (x_te, y_te), classes = get_data(args)
    keras.utils.set_random_seed(0)
    cfg = TrainConfig(arch=args.arch, batch_size=args.batch_size)
    model = build_model(args.arch, x.shape[1:], classes, image_size=args.image_size)
    compile_model(model, cfg)
    need = args.batch_size * (args.steps + args.warmup)
    reps = int(np.ceil(need / len(y)))
    ds = make_pipeline(x, y, args.batch_size, training=True, seed=0).repeat(reps)
    secs = measure(model, ds, args.steps, args.warmup)
    ips = args.steps * args.batch_size / secs
    print(f"arch {args.arch}  input {tuple(x.shape[1:])}  batch {args.batch_size}  params {model.count_params():,}")
    print(f"pipeline (uint8 tf.data): {ips:8.1f} images/s  ({args.steps} steps after {args.warmup} warm-up, "
          f"{tf.config.threading.get_intra_op_parallelism_threads() or 'all'} threads)")
    if args.baseline:
        keras.utils.set_random_seed(0)
        base = build_model(args.arch, x.shape[1:], classes, image_size=args.image_size)
        base.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy",
                     metrics=["accuracy"])
        xf = np.resize(x.astype("float32"), (need, *x.shape[1:]))
        yf = np.resize(y, need)

        class Timer(keras.callbacks.Callback):
            def on_train_batch_begin(self, batch, logs=None):
                if batch == args.warmup:
                    self.t0 = time.perf_counter()

        t = Timer()
        base.fit(xf, yf, batch_size=args.batch_size, epochs=1, verbose=0, callbacks=[t], shuffle=True)
        bips = args.steps * args.batch_size / (time.perf_counter() - t.t0)
        print(f"plain Keras fit (float32 NumPy, default compile): {bips:8.1f} images/s")
    if args.target_accuracy:
        keras.utils.set_random_seed(0)
        model = build_model(args.arch, x.shape[1:], classes, image_size=args.image_size)
        compile_model(model, cfg)
        train_ds = make_pipeline(x, y, args.batch_size, training=True, seed=0)
        test_ds = make_pipeline(x_te, y_te, 512)
        start = time.perf_counter()
        reached = None
        for epoch in range(1, args.max_epochs + 1):
            model.fit(train_ds, epochs=1, verbose=0)
            acc = model.evaluate(test_ds, verbose=0)[1]
            print(f"  epoch {epoch}: test accuracy {acc:.4f} at {time.perf_counter() - start:6.1f} s", flush=True)
            if acc >= args.target_accuracy:
                reached = time.perf_counter() - start
                break
        print(f"time to {args.target_accuracy:.4f} test accuracy: "
              + (f"{reached:.1f} s ({epoch} epochs)" if reached else f"not reached in {args.max_epochs} epochs"))
    print(f"peak RSS: {peak_rss_mb():.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
