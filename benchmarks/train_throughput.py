"""Training throughput side by side with PyTorch, peak memory, a TensorFlow profile, time-to-accuracy.

    python benchmarks/train_throughput.py --arch simple_cnn --dataset mnist --data-dir ../shared/data --peer torch
    python benchmarks/train_throughput.py --arch resnet18 --shape 28,28,3 --classes 9 --batch-size 64 \
        --precision bfloat16 --peer torch                                    # synthetic data, bf16 both sides
    python benchmarks/train_throughput.py --isa avx2 --arch simple_cnn --dataset mnist \
        --data-dir ../shared/data --peer torch                                # an AVX2 CPU's kernels, both sides
    python benchmarks/train_throughput.py --recipe fast --dataset mnist --data-dir ../shared/data \
        --profile /tmp/prof                                                   # the recipe's step, per-op table
    python benchmarks/train_throughput.py --arch simple_cnn --dataset mnist --data-dir ../shared/data \
        --target-accuracy 0.99 --max-epochs 5

Prints steady-state training images/s (after warm-up) of the project's pipeline (uint8 tf.data
batches, raw pixels into the model, the model and compile of `keras_digits.train` under --precision
and --steps-per-execution). With --peer torch, a PyTorch re-creation of the same model
(benchmarks/torch_peers.py) is timed on the same arrays in the same process, the two alternating
--repeats times (each side timed within its loop after warm-up steps), and the ratio of the medians
and the median of the per-repeat ratios are printed (torch is the optional `bench` extra; without it
the peer is skipped with a note). Every figure names the ISA the kernels ran with; --isa caps both
frameworks to see another CPU's behaviour. --baseline adds a plain Keras `fit` on float32 NumPy arrays (the
notebooks' way). --profile DIR traces some steps with TensorFlow's profiler (open DIR in TensorBoard's
Profile tab) and prints the ops that took the most time. Peak RSS is printed at the end. Compare
figures only within one run: absolute timings on a shared machine are noisy.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np

from keras_digits.utils.cli import quiet_tensorflow

# --isa: the caps TensorFlow's oneDNN and PyTorch (its oneDNN, its own kernels, MKL) read at start-up
ISA_CAPS = {
    "avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"},
    "avx512": {
        "ONEDNN_MAX_CPU_ISA": "AVX512_CORE",
        "ATEN_CPU_CAPABILITY": "avx512",
        "MKL_ENABLE_INSTRUCTIONS": "AVX512",
    },
}


def cap_isa(isa: str) -> None:
    """Restrict both frameworks to `isa` ('native': leave them alone); before either is imported."""
    import os

    os.environ.update(ISA_CAPS.get(isa, {}))


def get_data(args):
    if args.dataset:
        from keras_digits.data import load_dataset

        b = load_dataset(args.dataset, args.data_dir, max_train_samples=args.max_train_samples)
        return b.train, b.test, b.num_classes
    shape = tuple(int(s) for s in args.shape.split(","))
    rng = np.random.default_rng(0)
    n = max(args.batch_size * (args.steps + args.warmup), 4096)
    x = rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)
    y = rng.integers(0, args.classes, size=n).astype(np.int32)
    return (x, y), (x[:256], y[:256]), args.classes


def recipe_defaults(name: str | None) -> dict:
    """The benchmark flags and TrainConfig fields recipe `name` sets (none without a recipe)."""
    if not name:
        return {}
    from keras_digits.recipes import recipe_config

    return recipe_config(name)


def keras_model(args, cfg, shape, classes):
    """The model and compile `keras_digits.train` would use for `cfg` (policy set by precision.apply)."""
    import keras

    from keras_digits.training.setup import build_for, compile_model

    keras.utils.set_random_seed(0)
    model = build_for(cfg, shape, classes)
    compile_model(model, cfg)
    return model


def fit_seconds(model, *args, **kwargs) -> float:
    """Seconds of `model.fit(*args, **kwargs)` from the call to the end of training (`on_train_end`).

    Not to `fit`'s return: when `fit` returns, its tf.data iterator is deleted, and that deletion
    waited for tf.data's autotuning thread to wake, whose sleep doubles from 10 ms (it wakes at
    10 ms x (2^n - 1)). A fit whose last step ended 23.8 s after the call returned at 40.96 s; the earlier
    timing's exact 62.5 and 31.2 images/s ResNet-18 repeats were that wait (docs/speed.md).
    The project's pipelines now run without autotuning (`pipeline_options`), which removes it; the
    timing stays robust to a pipeline that autotunes."""
    import keras

    ended = []

    class _End(keras.callbacks.Callback):
        def on_train_end(self, logs=None):
            ended.append(time.perf_counter())

    t0 = time.perf_counter()
    model.fit(*args, callbacks=[_End()], **kwargs)
    return ended[-1] - t0


@contextlib.contextmanager
def conv_paths_off():
    """The project Conv2D's CPU paths (small maps as matrix products, the bias gradient as a reduction)
    off while a model's step is traced or run; yields whether this machine takes any of them here."""
    import keras

    from keras_digits.models import conv, smallconv

    small, bias = smallconv.matmul_max_area, conv.reduced_bias_grad_pays
    smallconv.matmul_max_area, conv.reduced_bias_grad_pays = (lambda dtype: 0), (lambda dtype: False)
    try:
        dtype = keras.config.dtype_policy().compute_dtype
        yield bool(small(dtype)) or bias(dtype)
    finally:
        smallconv.matmul_max_area, conv.reduced_bias_grad_pays = small, bias


def keras_images_per_second(model, ds, batch_size: int, steps: int, warmup: int, spe: int = 1) -> float:
    """Images/s of `steps` batches timed within one fit after its first `warmup` batches (the first call
    traces the step then), as the PyTorch peer times its loop after its warm-up steps: `fit`'s own start
    (iterator, callbacks, the pipeline's first batches) is not in the timed part on either side."""
    import keras

    skip = max(spe, -(-warmup // spe) * spe)
    marks: list[tuple[int, float]] = []

    class _Clock(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if not marks and batch + 1 >= skip:
                marks.append((batch + 1, time.perf_counter()))

        def on_train_end(self, logs=None):
            marks.append((skip + steps, time.perf_counter()))

    model.fit(ds, epochs=1, steps_per_epoch=skip + steps, callbacks=[_Clock()], verbose=0)
    (done, start), (total, end) = marks[0], marks[-1]
    return (total - done) * batch_size / (end - start)


def profile_steps(model, ds, steps: int, logdir: str, top: int = 15) -> None:
    """Trace `steps` training steps with TensorFlow's profiler into `logdir` and print the ops with the
    most self time on the host (the CPU executes every op here), grouped by op type."""
    import tensorflow as tf

    tf.profiler.experimental.start(logdir)
    model.fit(ds, epochs=1, steps_per_epoch=steps, verbose=0)
    tf.profiler.experimental.stop()
    from profile_table import op_table

    paths = sorted(Path(logdir).glob("plugins/profile/*/*.xplane.pb"), key=lambda p: p.stat().st_mtime)
    if not paths:
        print(f"profile: no trace written under {logdir}")
        return
    print(f"profile ({steps} steps; TensorBoard --logdir {logdir}, Profile tab):")
    print(op_table(paths[-1], steps, top))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="simple_cnn")
    p.add_argument(
        "--recipe",
        help="time a training recipe's model and step (arch, model options, batch size, optimizer, precision, "
        "steps per execution); flags given override it",
    )
    p.add_argument("--model-kwargs", default="{}", help="model options as JSON, e.g. '{\"dropout\": false}'")
    p.add_argument(
        "--isa",
        choices=("native", *ISA_CAPS),
        default="native",
        help="cap both frameworks' vector ISA (ONEDNN_MAX_CPU_ISA, ATEN_CPU_CAPABILITY, MKL_ENABLE_INSTRUCTIONS) "
        "to see how a CPU without the newer instructions behaves; native: what this CPU has",
    )
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--dataset", help="a registered dataset (default: synthetic data of --shape)")
    p.add_argument("--data-dir")
    p.add_argument("--shape", default="28,28,1", help="synthetic image shape H,W,C")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--image-size", type=int, help="model working resolution (default: per arch)")
    p.add_argument("--steps", type=int, default=300, help="timed steps")
    p.add_argument("--warmup", type=int, default=50, help="untimed steps first")
    p.add_argument("--max-train-samples", type=int)
    p.add_argument(
        "--precision",
        default="float32",
        choices=("auto", "float32", "bfloat16", "float16"),
        help="Keras policy (keras_digits.runtime.precision); the torch peer autocasts to bfloat16 for bfloat16",
    )
    p.add_argument("--steps-per-execution", type=int, default=1)
    p.add_argument("--lr", type=float, help="learning rate (default: the recipe's or 1e-3)")
    p.add_argument("--peer", choices=("torch",), help="time a PyTorch re-creation of the model in the same run")
    p.add_argument("--repeats", type=int, default=3, help="alternating timed runs of each side (median reported)")
    p.add_argument("--baseline", action="store_true", help="also time a plain Keras fit on float32 NumPy arrays")
    p.add_argument(
        "--without-conv-paths",
        "--without-small-map-paths",
        action="store_true",
        help="also time the same model with the project Conv2D's CPU paths off (the bias gradient, "
        "keras_digits/models/conv.py; small maps as products, keras_digits/models/smallconv.py), alternating",
    )
    p.add_argument("--profile", metavar="DIR", help="trace steps with TensorFlow's profiler; print the top ops")
    p.add_argument("--target-accuracy", type=float, help="train until test accuracy reaches this (MNIST)")
    p.add_argument("--max-epochs", type=int, default=15)
    first, _ = p.parse_known_args()
    recipe = recipe_defaults(first.recipe)
    p.set_defaults(**{k: recipe[k] for k in ("arch", "batch_size", "precision", "steps_per_execution") if k in recipe})
    args = p.parse_args()
    cap_isa(args.isa)

    quiet_tensorflow()
    import keras
    import tensorflow as tf

    from keras_digits.config import TrainConfig
    from keras_digits.data.pipeline import make_pipeline
    from keras_digits.runtime import precision

    (x, y), (x_te, y_te), classes = get_data(args)
    resolved = precision.apply(args.precision)
    spe = max(1, args.steps_per_execution)
    steps = -(-args.steps // spe) * spe
    warmup = -(-args.warmup // spe) * spe
    fields = {k: recipe[k] for k in ("optimizer", "lr", "weight_decay", "label_smoothing") if k in recipe}
    if args.lr is not None:
        fields["lr"] = args.lr
    cfg = TrainConfig(
        **fields,
        model_kwargs={**recipe.get("model_kwargs", {}), **json.loads(args.model_kwargs)},
        arch=args.arch,
        batch_size=args.batch_size,
        image_size=args.image_size,
        precision=resolved.name,
        steps_per_execution=spe,
        verbose=0,
    )
    model = keras_model(args, cfg, x.shape[1:], classes)
    ds = make_pipeline(x, y, args.batch_size, training=True, seed=0).repeat()
    threads = tf.config.threading.get_intra_op_parallelism_threads() or "all"
    isa = precision.cpu_isa()
    tag = f"[{isa.split(' ')[0]}, {resolved.name}]"  # beside every figure
    print(f"CPU: {precision.cpu_name()}; ISA {isa}")
    print(
        f"arch {args.arch}  input {tuple(x.shape[1:])}  batch {args.batch_size}  params {model.count_params():,}  "
        f"{resolved.describe()}  steps_per_execution {spe}  {threads} threads"
    )
    peer = None
    if args.peer == "torch":
        import torch_peers

        version = torch_peers.available()
        why = (
            "PyTorch is not installed: pip install -e '.[bench]'"
            if version is None
            else f"no PyTorch peer for {args.arch} (peers: {', '.join(torch_peers.PEERS)})"
            if args.arch not in torch_peers.PEERS
            else "--image-size resizes inside the Keras model; the peer trains at the data's size"
            if args.image_size
            else "the peer has no float16 autocast on a CPU"
            if resolved.name == "float16"
            else None
        )
        if why:
            print(f"peer torch: skipped ({why})")
        else:
            peer = torch_peers
            import torch

            print(
                f"peer: PyTorch {version}, {torch.get_num_threads()} threads, "
                f"kernels {torch.backends.cpu.get_cpu_capability()}, "
                f"{'bfloat16 autocast' if resolved.name == 'bfloat16' else 'float32'}"
            )
    plain = None
    if args.without_conv_paths:
        plain = keras_model(args, cfg, x.shape[1:], classes)  # traced in the first repeat, as the others
        with conv_paths_off() as taken:
            pass
        print(
            "also timed: the same model without the Conv2D paths"
            + ("" if taken else " (this machine does not take them here, so both are the same model)")
        )
    sides = {"keras_digits": lambda first: keras_images_per_second(model, ds, args.batch_size, steps, first or 5, spe)}
    if plain is not None:

        def without_paths(first):
            with conv_paths_off():  # any retrace of its step happens with the paths off too
                return keras_images_per_second(plain, ds, args.batch_size, steps, first or 5, spe)

        sides["without the paths"] = without_paths
    if peer is not None:
        sides["PyTorch"] = lambda first: peer.train_images_per_second(
            args.arch, x, y, classes, args.batch_size, steps, first or 5, resolved.name
        )
    # each repeat times every side once, in alternating order (A B C, C B A, ...) so that the machine's
    # drift within a repeat falls on both sides of a ratio; the first repeat warms each side up
    runs: dict[str, list[float]] = {name: [] for name in sides}
    for r in range(max(1, args.repeats)):
        for name in sides if r % 2 == 0 else reversed(list(sides)):
            runs[name].append(sides[name](warmup if r == 0 else 0))
        line = "   ".join(f"{name} {runs[name][-1]:8.1f} images/s" for name in sides)
        print(f"  repeat {r + 1}: {line}  {tag}", flush=True)
    ours, theirs, without = runs["keras_digits"], runs.get("PyTorch", []), runs.get("without the paths", [])
    k = statistics.median(ours)
    print(
        f"keras_digits pipeline (uint8 tf.data): {k:8.1f} images/s (median of {len(ours)}, {steps} steps each)  {tag}"
    )

    def paired(a: list[float], b: list[float]) -> str:
        """Ratio of the medians, and the median of the repeats' own ratios (robust to drift between repeats)."""
        each = statistics.median(x / y for x, y in zip(a, b, strict=True))
        return f"{statistics.median(a) / statistics.median(b):.2f}x (per repeat: median {each:.2f}x)"

    if theirs:
        t = statistics.median(theirs)
        print(f"PyTorch peer:                          {t:8.1f} images/s (median of {len(theirs)})  {tag}")
        print(f"ratio keras_digits / PyTorch: {paired(ours, theirs)}  {tag}")
    if without:
        w = statistics.median(without)
        print(
            f"without the Conv2D paths:              {w:8.1f} images/s (median of {len(without)}); "
            f"with / without: {paired(ours, without)}"
            + (f"; without / PyTorch: {paired(without, theirs)}" if theirs else "")
            + f"  {tag}"
        )
    if args.baseline:
        keras.utils.set_random_seed(0)
        base = keras_model(args, cfg.replace(steps_per_execution=1), x.shape[1:], classes)  # fit's default step
        need = args.batch_size * (steps + warmup)
        xf = np.resize(x.astype("float32"), (need, *x.shape[1:]))
        yf = np.resize(y, need)
        base.fit(
            xf[: args.batch_size * warmup],
            yf[: args.batch_size * warmup],
            batch_size=args.batch_size,
            epochs=1,
            verbose=0,
        )
        secs = fit_seconds(
            base,
            xf[: args.batch_size * steps],
            yf[: args.batch_size * steps],
            batch_size=args.batch_size,
            epochs=1,
            verbose=0,
            shuffle=True,
        )
        print(f"plain Keras fit (float32 NumPy):       {steps * args.batch_size / secs:8.1f} images/s  {tag}")
    if args.profile:
        profile_steps(model, ds, min(steps, 100), args.profile)
    if args.target_accuracy:
        keras.utils.set_random_seed(0)
        model = keras_model(args, cfg, x.shape[1:], classes)
        train_ds = make_pipeline(x, y, args.batch_size, training=True, seed=0)
        test_ds = make_pipeline(x_te, y_te, 512)
        start = time.perf_counter()
        reached = None
        for epoch in range(1, args.max_epochs + 1):
            model.fit(train_ds, epochs=1, verbose=0)
            acc = model.evaluate(test_ds, verbose=0)[1]
            took = time.perf_counter() - start
            print(f"  epoch {epoch}: test accuracy {acc:.4f} at {took:6.1f} s  {tag}", flush=True)
            if acc >= args.target_accuracy:
                reached = time.perf_counter() - start
                break
        print(
            f"time to {args.target_accuracy:.4f} test accuracy: "
            + (f"{reached:.1f} s ({epoch} epochs)" if reached else f"not reached in {args.max_epochs} epochs")
            + f"  {tag}"
        )
    from keras_digits.training.setup import peak_rss_bytes

    peak = peak_rss_bytes()
    print(f"peak RSS: {peak / 2**20:.0f} MB" if peak else "peak RSS: not reported by this OS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
