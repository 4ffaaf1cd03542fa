"""Inference speed of every export format side by side, in one process: images/s at batch 1 and 64, and
file size.

    python benchmarks/serving.py [--model saved_models/NAME/1] [--batches 1,64] [--repeats 5] [--seconds 1]

Without --model, an untrained simple_cnn for 28x28x1 inputs (weights do not change the speed) is
written in every format to a temporary folder, with a dynamic-range and an int8 LiteRT (the int8 one
calibrated on random images: fine for timing, not for accuracy). With --model, the formats found in
that version folder (saved_model.pb, model.onnx, model*.tflite, model.keras) are timed.

Each format runs through keras_digits.serving.runtimes, the code the export's fresh-process check runs
(and predict, for model files): TensorFlow's `serving_default` signature, an onnxruntime session, the
LiteRT interpreter, Keras' predict_on_batch. All get the same uint8 images at the model's input shape. Every
repeat times every format once per batch size for about --seconds, in an order rotated between
repeats (this machine's speed drifts); the table shows the median images/s over the repeats and its
ratio to the SavedModel's, with the CPU's name and ISA. --threads sets the intra-op threads of
TensorFlow (so the SavedModel and Keras), onnxruntime and LiteRT (default: each runtime's own choice;
LiteRT's interpreter is given all logical cores). ONEDNN_MAX_CPU_ISA caps TensorFlow's oneDNN only: onnxruntime
(MLAS) and LiteRT (XNNPACK) choose their own kernels. Figures, not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def export_untrained(folder: Path) -> Path:
    """An untrained simple_cnn (28x28x1, 10 classes) in every format into folder/1; returns that folder."""
    from keras_digits.models import build_model
    from keras_digits.models.portable import stock_twin
    from keras_digits.serving import convert
    from keras_digits.serving.export import write_assets, write_saved_model

    model = build_model("simple_cnn", (28, 28, 1), 10)
    twin = stock_twin(model)
    labels = [str(i) for i in range(10)]
    version = folder / "1"
    version.mkdir(parents=True)
    write_saved_model(model, version, labels, {"arch": "simple_cnn"}, "none")
    write_assets(version, labels, {"arch": "simple_cnn"}, None)
    convert.write_onnx(twin, version / "model.onnx")
    convert.write_litert(twin, version / "model.tflite")
    convert.write_litert(twin, version / "model_dynamic.tflite", "dynamic")
    rng = np.random.default_rng(0)

    def calibration():
        for _ in range(32):
            yield [rng.integers(0, 256, (1, 28, 28, 1), dtype=np.uint8)]

    convert.write_litert(twin, version / "model_int8.tflite", "int8", calibration)
    convert.write_keras(twin, version / "model.keras")
    return version


def found_formats(version: Path) -> list[tuple[str, str, Path]]:
    """(label, runtime kind, path) of every model in a version folder."""
    out = []
    if (version / "saved_model.pb").is_file():
        out.append(("saved_model", "saved_model", version))
    if (version / "model.onnx").is_file():
        out.append(("onnx", "onnx", version / "model.onnx"))
    for path in sorted(version.glob("model*.tflite")):
        label = "litert" if path.stem == "model" else f"litert_{path.stem.removeprefix('model_')}"
        out.append((label, "litert", path))
    if (version / "model.keras").is_file():
        out.append(("keras", "keras", version / "model.keras"))
    return out


def timed(run, images: np.ndarray, seconds: float) -> float:
    """Images/s of run(images) called repeatedly for about `seconds`."""
    calls, start = 0, time.perf_counter()
    while True:
        run(images)
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds and calls >= 3:
            return calls * len(images) / elapsed


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python benchmarks/serving.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
    )
    p.add_argument("--model", help="an export version folder (default: every format of an untrained simple_cnn)")
    p.add_argument("--batches", default="1,64", help="batch sizes, comma-separated (default 1,64)")
    p.add_argument("--repeats", type=int, default=5, help="rounds over every format (default 5)")
    p.add_argument("--seconds", type=float, default=1.0, help="time per format, batch and round (default 1)")
    p.add_argument("--warmup", type=int, default=5, help="untimed calls per format and batch first (default 5)")
    p.add_argument("--threads", type=int, help="intra-op threads of every runtime (default: each one's choice)")
    args = p.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",") if b.strip()]
    if not batches or min(batches) < 1 or args.repeats < 1 or args.seconds <= 0:
        p.error("--batches, --repeats and --seconds must be positive")

    from keras_digits.utils.cli import quiet_tensorflow

    quiet_tensorflow()  # TensorFlow's start-up chatter (no CUDA driver, ...) off stderr
    if args.threads:
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(args.threads)  # before TensorFlow starts
    from keras_digits.runtime.precision import cpu_isa, cpu_name
    from keras_digits.serving.export_record import size_of
    from keras_digits.serving.runtimes import open_runtime

    with tempfile.TemporaryDirectory() as tmp:
        if args.model:
            version = Path(args.model)
            if not version.is_dir():
                p.error(f"not a folder: {version}")
        else:
            start = time.perf_counter()
            version = export_untrained(Path(tmp))
            print(f"exported an untrained simple_cnn in every format in {time.perf_counter() - start:.1f} s")
        models = found_formats(version)
        if not models:
            p.error(f"no model files in {version}")
        sizes = {label: size_of(path) for label, _, path in models}
        runtimes = {label: open_runtime(kind, str(path), args.threads) for label, kind, path in models}
        shape = next((r.input_shape for r in runtimes.values() if r.input_shape), None)
        if shape is None:
            p.error(f"cannot tell the input shape of the models in {version} (a SavedModel without serve_float?)")
        rng = np.random.default_rng(0)
        inputs = {b: rng.integers(0, 256, (b, *shape), dtype=np.uint8) for b in batches}
        for runtime in runtimes.values():
            for b in batches:
                for _ in range(args.warmup):
                    runtime.run(inputs[b])
        rates: dict[tuple[str, int], list[float]] = {(label, b): [] for label in runtimes for b in batches}
        labels = list(runtimes)
        for r in range(args.repeats):
            order = labels[r % len(labels) :] + labels[: r % len(labels)]
            for label in order:
                for b in batches:
                    rates[(label, b)].append(timed(runtimes[label].run, inputs[b], args.seconds))
            print(f"round {r + 1}/{args.repeats} done", flush=True)

    isa = cpu_isa()
    print(f"\nCPU: {cpu_name()}; ISA {isa}; {os.cpu_count()} logical cores; input {'x'.join(map(str, shape))} uint8")
    print(f"median images/s over {args.repeats} rounds of ~{args.seconds:g} s (ratio to saved_model)\n")
    head = "| format | runtime | file size | " + " | ".join(f"batch {b}" for b in batches) + " |"
    print(head)
    print("| --- | --- | ---: | " + " | ".join("---:" for _ in batches) + " |")
    base = {b: statistics.median(rates[("saved_model", b)]) for b in batches} if "saved_model" in runtimes else {}
    for label, _kind, _path in models:
        rt = runtimes[label]
        cells = []
        for b in batches:
            med = statistics.median(rates[(label, b)])
            ratio = f" ({med / base[b]:.2f}x)" if base else ""
            cells.append(f"{med:,.0f}{ratio}")
        size = f"{sizes[label] / 2**20:.2f} MiB"
        print(f"| {label} | {rt.name} {rt.version} | {size} | " + " | ".join(cells) + " |")
    print(f"\n[{isa.split(' ')[0]}] figures from this one run; compare them only with each other")
    return 0


if __name__ == "__main__":
    sys.exit(main())
