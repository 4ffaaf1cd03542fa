"""Seconds per epoch of `keras_digits.train` runs, with tf.data autotuning off (as shipped) and on.

    python benchmarks/epoch_overhead.py --dataset mnist --data-dir ../shared/data --recipe best --epochs 4
    python benchmarks/epoch_overhead.py --dataset mnist --data-dir ../shared/data --epochs 4     # the defaults

Runs `keras_digits.training.run.train_and_evaluate` for the recipe (or the defaults) with --epochs, twice
per repeat, alternating (and alternating which goes first): once as shipped (every pipeline built
with `pipeline_options`, autotuning off), once with `options.autotune.enabled = True` (tf.data's
default, what the project used before).
It prints each epoch's seconds from the run's history.csv (training and the validation pass) and the
wall time of the whole run (loading, training, scoring, report). Keras makes a new iterator at every
epoch and validation pass, and deleting one could wait for the autotuning thread's next wake-up.
Compare figures only within one run: absolute timings on a shared machine are noisy.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from keras_digits.utils.cli import quiet_tensorflow


@contextlib.contextmanager
def autotuning_on():
    """Pipelines built inside get tf.data's default options (autotuning on)."""
    from keras_digits.data import pipeline

    shipped = pipeline.pipeline_options

    def with_autotune():
        options = shipped()
        options.autotune.enabled = True
        return options

    pipeline.pipeline_options = with_autotune
    try:
        yield
    finally:
        pipeline.pipeline_options = shipped


def timed_run(cfg, autotune: bool) -> tuple[list[float], float]:
    """(seconds of each epoch from history.csv, wall seconds of the run) of one training run."""
    from keras_digits.training.run import train_and_evaluate

    with tempfile.TemporaryDirectory() as tmp, autotuning_on() if autotune else contextlib.nullcontext():
        t0 = time.perf_counter()
        train_and_evaluate(cfg, Path(tmp) / "run")
        wall = time.perf_counter() - t0
        with open(Path(tmp) / "run" / "history.csv", newline="") as f:
            epochs = [float(row["epoch_seconds"]) for row in csv.DictReader(f)]
    return epochs, wall


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--data-dir")
    p.add_argument("--recipe", help="a shipped recipe (keras_digits/recipes); default: train's defaults")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--repeats", type=int, default=1, help="alternating fits of each side")
    p.add_argument("--max-train-samples", type=int)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    if args.epochs < 2:
        p.error("--epochs must be at least 2: the first epoch has no earlier iterator to delete")

    quiet_tensorflow()
    from keras_digits.config import TrainConfig
    from keras_digits.errors import KerasDigitsError
    from keras_digits.runtime import precision

    try:
        base = {}
        if args.recipe:
            from keras_digits.recipes import recipe_config

            base = recipe_config(args.recipe)
        cfg = TrainConfig(
            **{
                **base,
                "dataset": args.dataset,
                "data_dir": args.data_dir,
                "epochs": args.epochs,
                "max_train_samples": args.max_train_samples,
                "verbose": 0,
                "seed": args.seed,
            }
        )
        cfg = TrainConfig(**{**cfg.to_dict(), "precision": precision.apply(cfg.precision).name})
        print(
            f"{cfg.arch} on {cfg.dataset}, batch {cfg.batch_size}, augment {cfg.augment or 'none'}, "
            f"precision {cfg.precision}, {args.epochs} epochs"
        )
        totals: dict[bool, list[float]] = {False: [], True: []}
        for r in range(max(1, args.repeats)):
            for autotune in (False, True) if r % 2 == 0 else (True, False):  # each side goes first in turn
                epochs, total = timed_run(cfg, autotune)  # the run loads the data itself
                totals[autotune].append(total)
                name = "autotune on " if autotune else "as shipped  "
                print(
                    f"  repeat {r + 1}, {name}: epochs "
                    + "  ".join(f"{s:5.1f}" for s in epochs)
                    + f" s   run {total:6.1f} s",
                    flush=True,
                )
    except KerasDigitsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    off, on = min(totals[False]), min(totals[True])
    print(
        f"run seconds (best of {len(totals[False])}): as shipped {off:.1f}, autotune on {on:.1f}: "
        f"{on / off:.2f}x as long with autotuning"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
