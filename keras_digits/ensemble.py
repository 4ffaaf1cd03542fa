"""`python -m keras_digits.ensemble --runs DIR DIR ... [--split test]`: average members' softmax outputs.

Each member is scored on the same split, which none of them trained or selected on (test by
default; members must share dataset, data and validation split so that their test sets coincide).
The ensemble's metrics are written in the run metrics format beside each member's.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from keras_digits.cli import run_cli
from keras_digits.errors import KerasDigitsError
from keras_digits.io import check_output_dir, write_json, write_text
from keras_digits.lock import hold


def ensemble_runs(run_dirs: Sequence[str | Path], split: str = "test", data_dir: str | None = None) -> dict:
    """Metrics of each member and of the mean of their softmax outputs on one split."""
    from keras_digits.config import TrainConfig
    from keras_digits.data import load_for
    from keras_digits.evaluate import check_compatible, classification_metrics, load_run, predict_probs, same_data
    from keras_digits.rundir import dataset_record

    if len(run_dirs) < 2:
        raise KerasDigitsError("an ensemble needs at least two --runs")
    if split != "test":
        raise KerasDigitsError(f"the members trained on train and chose their checkpoints on val; "
                               f"score an ensemble on test, not {split!r}")
    members = [load_run(d) for d in run_dirs]
    cfgs = [TrainConfig.from_dict(c) for c, _ in members]
    datasets = {c.dataset for c in cfgs}
    if len(datasets) != 1:
        raise KerasDigitsError(f"members were trained on different datasets: {', '.join(sorted(datasets))}")
    records = [dataset_record(Path(d)) for d in run_dirs]
    labels = {tuple(r.get("label_names") or ()) for r in records} - {()}
    if len(labels) > 1:
        raise KerasDigitsError("members were trained with different label names: "
                               + "; ".join(f"{d}: {list(r.get('label_names') or [])}" for d, r in zip(run_dirs, records)))
    cfg = cfgs[0]
    bundle = load_for(cfg, data_dir)
    for d, record, (_, model) in zip(run_dirs, records, members):
        check_compatible(model, record, bundle, f"member {d}")
        if not same_data(record, bundle, split):
            raise KerasDigitsError(f"member {d} was not tested on this {split} split ({bundle.source}): members must "
                                   "share the data they were trained and tested on")
    x, y = bundle.split(split)
    probs = [predict_probs(model, x) for _, model in members]
    result = {
        "split": split,
        "dataset": cfg.dataset,
        "members": [
            {"run": str(d), "arch": c.arch, **{k: v for k, v in classification_metrics(y, p, bundle.label_names).items()
                                                if k in ("accuracy", "loss", "f1", "auc")}}
            for d, c, p in zip(run_dirs, cfgs, probs)
        ],
        split: classification_metrics(y, np.mean(probs, axis=0), bundle.label_names),
    }
    return result


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m keras_digits.ensemble", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", nargs="+", required=True, help="two or more run directories")
    p.add_argument("--split", default="test", choices=("test",),
                   help="split to score on: test (every member chose its checkpoint on val)")
    p.add_argument("--data-dir", help="override the members' data directory")
    p.add_argument("--out", help="output folder (default: runs/ensemble-<member names>)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.out) if args.out else Path("runs") / ("ensemble-" + "+".join(Path(r).name for r in args.runs))[:120]
    check_output_dir(out, "--out folder")
    result = ensemble_runs(args.runs, args.split, args.data_dir)
    from keras_digits.html_report import ensemble_page

    with hold(out, "ensemble folder"):
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "metrics.json", result)
        write_text(out / "report.html", ensemble_page(result, out))
    for m in result["members"]:
        print(f"member {m['run']}: {args.split} accuracy {m['accuracy']:.4f}")
    ens = result[args.split]
    print(f"ensemble of {len(result['members'])}: {args.split} accuracy {ens['accuracy']:.4f} "
          f"(loss {ens['loss']:.4f}); metrics in {out / 'metrics.json'}, page {out / 'report.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
