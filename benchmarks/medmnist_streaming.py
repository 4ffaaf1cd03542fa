"""Memory of a large-size MedMNIST run: the memory-mapped path under a hard limit on process memory.

    python benchmarks/medmnist_streaming.py --write /tmp/big --dataset organamnist --size 64 --train 80000
    python benchmarks/medmnist_streaming.py --data-dir /tmp/big --dataset organamnist --size 64 --limit-mb 200

--write makes a MedMNIST-layout NAME_SIZE.npz of random images, streamed to disk (no split in memory).
The measurement imports TensorFlow, warms up a small model, then caps the process's data memory
(RLIMIT_DATA: heap and anonymous mappings; file-backed read-only mappings do not count) at what it
uses now plus --limit-mb, and only then loads the dataset (a one-time conversion to uncompressed
arrays, then memory-mapped), computes --normalize dataset statistics, trains --steps batches of the
project's training pipeline, predicts every training image and fingerprints the split. It prints the
split's size against the limit and the process's memory; a step that held the split in memory would
fail with MemoryError. --prove-limit ends by copying the split into memory, which must be refused.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import sys
import time
import zipfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _status(key: str) -> int:
    """A /proc/self/status figure in bytes."""
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{key}:\s+(\d+) kB", text, re.M).group(1)) * 1024


def _write_array(zf: zipfile.ZipFile, key: str, shape: tuple, dtype, fill, chunk: int = 4096) -> None:
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": shape}
    with zf.open(f"{key}.npy", "w", force_zip64=True) as fh:
        np.lib.format.write_array_header_2_0(fh, header)
        for start in range(0, shape[0], chunk):
            fh.write(np.ascontiguousarray(fill(start, min(shape[0], start + chunk)), dtype=dtype).tobytes())


def write_npz(path: Path, counts: dict[str, int], size: int, channels: int, classes: int, seed: int = 0) -> int:
    """A MedMNIST-layout npz of random uint8 images (labels cycling over the classes); returns its bytes."""
    rng = np.random.default_rng(seed)
    shape = (size, size) if channels == 1 else (size, size, channels)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for split, n in counts.items():
            _write_array(
                zf,
                f"{split}_images",
                (n, *shape),
                np.uint8,
                lambda a, b: rng.integers(0, 256, size=(b - a, *shape), dtype=np.uint8),
            )
            _write_array(
                zf, f"{split}_labels", (n, 1), np.uint8, lambda a, b: (np.arange(a, b) % classes).reshape(-1, 1)
            )
    os.replace(tmp, path)
    return path.stat().st_size


def measure(args) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    from keras_digits.config import TrainConfig
    from keras_digits.data import get_spec, load_dataset
    from keras_digits.data.datasets import make_datasets
    from keras_digits.data.fingerprint import split_fingerprint
    from keras_digits.evaluation.metrics import predict_probs

    spec = get_spec(args.dataset)
    channels, classes = spec.image_shape[-1], spec.num_classes
    model = keras.Sequential(
        [
            keras.Input((args.size, args.size, channels)),
            keras.layers.Rescaling(1 / 255),
            keras.layers.Conv2D(4, 3, strides=4),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(classes, activation="softmax"),
        ]
    )
    model.compile("adam", "sparse_categorical_crossentropy")
    warm = np.zeros((args.batch_size, args.size, args.size, channels), np.uint8)
    model.fit(warm, np.zeros(len(warm), np.int32), epochs=1, verbose=0)
    model.predict(warm, verbose=0)
    base = _status("VmData")
    limit = base + args.limit_mb * 2**20
    resource.setrlimit(resource.RLIMIT_DATA, (limit, resource.getrlimit(resource.RLIMIT_DATA)[1]))
    print(
        f"data memory capped at {limit / 2**20:,.0f} MB ({base / 2**20:,.0f} MB in use + {args.limit_mb} MB)",
        flush=True,
    )

    t0 = time.perf_counter()
    bundle = load_dataset(args.dataset, args.data_dir, size=args.size)
    x, y = bundle.train
    split_mb = x.nbytes / 2**20
    print(
        f"{args.dataset} {args.size} px: train split {x.shape} = {split_mb:,.0f} MB "
        f"({split_mb / args.limit_mb:.1f}x the {args.limit_mb} MB allowed), memory-mapped: "
        f"{isinstance(x, np.memmap)}; loaded in {time.perf_counter() - t0:.1f} s",
        flush=True,
    )
    cfg = TrainConfig(dataset=args.dataset, size=args.size, batch_size=args.batch_size, normalize="dataset", verbose=0)
    t0 = time.perf_counter()
    pipes = make_datasets(cfg, bundle)
    print(f"normalisation statistics over the split: {time.perf_counter() - t0:.1f} s", flush=True)
    t0 = time.perf_counter()
    model.fit(pipes.train.take(args.steps), epochs=1, verbose=0)
    dt = time.perf_counter() - t0
    print(
        f"trained {args.steps} batches of {args.batch_size} in {dt:.1f} s "
        f"({args.steps * args.batch_size / dt:,.0f} images/s)",
        flush=True,
    )
    t0 = time.perf_counter()
    probs = predict_probs(model, x, batch_size=512)
    print(f"predicted all {len(probs):,} training images in {time.perf_counter() - t0:.1f} s", flush=True)
    t0 = time.perf_counter()
    print(f"fingerprint {split_fingerprint(x, y)} in {time.perf_counter() - t0:.1f} s", flush=True)
    print(
        f"peak data memory after the run: VmData {_status('VmData') / 2**20:,.0f} MB; "
        f"anonymous RSS {_status('RssAnon') / 2**20:,.0f} MB; peak RSS (file pages included) "
        f"{_status('VmHWM') / 2**20:,.0f} MB",
        flush=True,
    )
    if args.prove_limit:
        try:
            np.array(x)
        except MemoryError:
            print("copying the split into memory was refused (MemoryError): the cap holds")
            return 0
        print("copying the split into memory was NOT refused: the cap does not bind", file=sys.stderr)
        return 1
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="organamnist")
    p.add_argument("--size", type=int, default=64, choices=(64, 128, 224))
    p.add_argument("--write", metavar="DIR", help="write a random NAME_SIZE.npz there and exit")
    p.add_argument("--train", type=int, default=80_000, help="training images to write")
    p.add_argument("--eval", type=int, default=512, help="val and test images to write")
    p.add_argument("--data-dir", help="folder holding NAME_SIZE.npz (measure)")
    p.add_argument("--limit-mb", type=int, default=200, help="data memory allowed beyond the warmed-up process")
    p.add_argument("--steps", type=int, default=50, help="training batches")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--prove-limit", action="store_true", help="end by checking a full copy is refused")
    args = p.parse_args(argv)
    if args.write:
        from keras_digits.data import get_spec

        spec = get_spec(args.dataset)
        path = Path(args.write) / f"{args.dataset}_{args.size}.npz"
        n = write_npz(
            path,
            {"train": args.train, "val": args.eval, "test": args.eval},
            args.size,
            spec.image_shape[-1],
            spec.num_classes,
        )
        print(f"wrote {path} ({n / 2**20:,.0f} MB)")
        return 0
    if not args.data_dir:
        p.error("give --write DIR or --data-dir DIR")
    return measure(args)


if __name__ == "__main__":
    sys.exit(main())
