"""Explanation speed and memory: images/s and peak RSS per method, on the CPU.

    python benchmarks/explain_speed.py                          # simple_cnn and resnet50 at 64 px
    python benchmarks/explain_speed.py --cases simple_cnn:28:1 --methods gradcam,rise --images 32

Each (arch, method) runs in its own process, so its peak resident memory (ru_maxrss) is its own: the
table shows that peak and its rise over the same process just before the method ran (TensorFlow, the
model and the images loaded, traced once on one image). Weights are random (speed does not depend on
training); the methods run with the CLI's defaults (RISE 1000 masks, SmoothGrad/SquareGrad/VarGrad/
GradientSHAP 25 samples, IG 32 steps, Score-CAM 256 channels, LIME/KernelSHAP 1000 coalitions of 50
superpixels, batch 64) unless --masks/--samples/--steps/--coalitions/--batch-size say otherwise.
Images/s counts explained images, after a warm-up call on one image.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DEFAULT_CASES = ["simple_cnn:64:1", "resnet50:64:3"]


def child(arch: str, side: int, channels: int, method: str, n: int, opts: dict) -> dict:
    import numpy as np

    from keras_digits.utils.cli import quiet_tensorflow

    quiet_tensorflow()
    from keras_digits.explain import CAM_METHODS, method_fn
    from keras_digits.explain.core import Explainer, Options
    from keras_digits.models.registry import build_model

    model = build_model(arch, (side, side, channels), 10)
    ex = Explainer(model, options=Options(**opts))
    x = np.random.default_rng(0).integers(0, 256, (n, side, side, channels)).astype(np.float32)
    t = ex.predict(x).argmax(axis=1).astype(np.int32)
    c = np.full(n, -1, np.int32)
    fn = method_fn(method)
    if ex.layer is None and method in CAM_METHODS:
        return {"skipped": "no spatial layer"}
    fn(ex, x[:1], t[:1], c[:1])  # trace
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    fn(ex, x, t, c)
    secs = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "images_per_s": n / secs,
        "seconds": secs,
        "peak_mib": peak / 1024,
        "rise_mib": (peak - before) / 1024,
        "layer": ex.layer.path if ex.layer is not None else None,
    }


def main() -> int:
    from keras_digits.explain import METHODS, parse_methods
    from keras_digits.runtime.precision import cpu_isa, cpu_name

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cases", nargs="+", default=DEFAULT_CASES, help="ARCH:SIDE:CHANNELS (default: %(default)s)")
    p.add_argument("--methods", default="all")
    p.add_argument("--images", type=int, default=16, help="images explained per method (default 16)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--masks", type=int, default=1000)
    p.add_argument("--samples", type=int, default=25)
    p.add_argument("--steps", type=int, default=32)
    p.add_argument("--coalitions", type=int, default=1000)
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    opts = {
        "batch_size": args.batch_size,
        "masks": args.masks,
        "samples": args.samples,
        "steps": args.steps,
        "coalitions": args.coalitions,
    }
    if args.child:
        arch, side, ch, method = args.child.split(":")
        print(json.dumps(child(arch, int(side), int(ch), method, args.images, opts)))
        return 0
    methods = parse_methods(args.methods)
    print(
        f"# {cpu_name()} ({cpu_isa()}), {os.cpu_count()} cores; {args.images} images per method; batch "
        f"{args.batch_size}; RISE {args.masks} masks, {args.samples} noise samples, IG {args.steps} steps, "
        f"LIME/KernelSHAP {args.coalitions} coalitions"
    )
    print(f"{'arch':<11} {'px':>4} {'method':<15} {'images/s':>9} {'seconds':>8} {'peak RSS MiB':>13} {'rise MiB':>9}")
    for case in args.cases:
        for method in methods:
            cmd = [
                sys.executable,
                __file__,
                "--child",
                f"{case}:{method}",
                "--images",
                str(args.images),
                "--batch-size",
                str(args.batch_size),
                "--masks",
                str(args.masks),
                "--samples",
                str(args.samples),
                "--steps",
                str(args.steps),
                "--coalitions",
                str(args.coalitions),
            ]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            arch, side, _ = case.split(":")
            if proc.returncode != 0:
                print(f"{arch:<11} {side:>4} {method:<15} failed: {proc.stderr.strip().splitlines()[-1:]}")
                continue
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            if "skipped" in r:
                print(f"{arch:<11} {side:>4} {method:<15} {r['skipped']}")
                continue
            print(
                f"{arch:<11} {side:>4} {method:<15} {r['images_per_s']:9.1f} {r['seconds']:8.2f} "
                f"{r['peak_mib']:13.0f} {r['rise_mib']:9.0f}",
                flush=True,
            )
    assert set(methods) <= set(METHODS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
