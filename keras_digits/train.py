"""`python -m keras_digits.train`: train and score one model into a run directory
(the run itself is keras_digits.training.run.train_and_evaluate)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from keras_digits.training.flags import FILES, add_train_flags, config_from_args
from keras_digits.training.rundir import default_run_dir
from keras_digits.utils.cli import run_cli


def build_parser() -> argparse.ArgumentParser:
    """The train CLI: the shared training flags (keras_digits.training.flags) plus --run-dir and --overwrite."""
    p = argparse.ArgumentParser(
        prog="python -m keras_digits.train",
        description="Train and evaluate an image classifier; writes config, history, best model, "
        "TensorBoard logs, metrics and plots into a run directory.",
    )
    groups = add_train_flags(p)
    groups[FILES].add_argument(
        "--run-dir", default=argparse.SUPPRESS, help="output folder (default: runs/<dataset>-<arch>-s<seed>)"
    )
    groups[FILES].add_argument("--overwrite", action="store_true", help="replace a finished run in --run-dir")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    cfg = config_from_args(args)
    run_dir = Path(args.run_dir) if getattr(args, "run_dir", None) else default_run_dir(cfg)
    from keras_digits.training.run import train_and_evaluate  # imports Keras: after run_cli has quieted TensorFlow
    from keras_digits.training.setup import peak_rss_bytes

    metrics = train_and_evaluate(cfg, run_dir, overwrite=args.overwrite)
    if not metrics:  # a multi-worker run's non-chief worker: the chief keeps and scores the run
        print(f"worker done: the chief writes and scores {run_dir}")
        return 0
    for split in ("val", "test"):
        if split in metrics:
            m = metrics[split]
            auc = "" if m["auc"] is None else f", auc {m['auc']:.4f}"
            print(f"{split} accuracy: {m['accuracy']:.4f} (loss {m['loss']:.4f}, macro-F1 {m['f1']:.4f}{auc})")
    if "medmnist" in metrics:
        from keras_digits.evaluation.medmnist_protocol import protocol_line

        print(protocol_line(metrics["medmnist"]))
    peak = peak_rss_bytes()
    memory = f", peak memory {peak / 2**30:.2f} GiB" if peak else ""
    print(f"run saved to {run_dir} ({metrics['epochs_run']} epochs, {metrics['train_seconds']:.0f} s{memory})")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
