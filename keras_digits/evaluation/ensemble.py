"""Ensembles of finished runs: averaged softmax outputs scored on a split none of them used."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from keras_digits.errors import KerasDigitsError


def ensemble_runs(run_dirs: Sequence[str | Path], split: str = "test", data_dir: str | None = None) -> dict:
    """Metrics of each member and of the mean of their softmax outputs on one split."""
    from keras_digits.config import TrainConfig
    from keras_digits.data import load_for
    from keras_digits.evaluation.metrics import classification_metrics, predict_probs
    from keras_digits.evaluation.records import dataset_record
    from keras_digits.evaluation.runs import check_compatible, load_run, same_data

    if len(run_dirs) < 2:
        raise KerasDigitsError("an ensemble needs at least two --runs")
    if split != "test":
        raise KerasDigitsError(
            f"the members trained on train and chose their checkpoints on val; score an ensemble on test, not {split!r}"
        )
    members = [load_run(d) for d in run_dirs]
    cfgs = [TrainConfig.from_dict(c) for c, _ in members]
    datasets = {c.dataset for c in cfgs}
    if len(datasets) != 1:
        raise KerasDigitsError(f"members were trained on different datasets: {', '.join(sorted(datasets))}")
    records = [dataset_record(Path(d)) for d in run_dirs]
    labels = {tuple(r.get("label_names") or ()) for r in records} - {()}
    if len(labels) > 1:
        raise KerasDigitsError(
            "members were trained with different label names: "
            + "; ".join(f"{d}: {list(r.get('label_names') or [])}" for d, r in zip(run_dirs, records))
        )
    cfg = cfgs[0]
    bundle = load_for(cfg, data_dir)
    for d, record, (_, model) in zip(run_dirs, records, members):
        check_compatible(model, record, bundle, f"member {d}")
        if not same_data(record, bundle, split):
            raise KerasDigitsError(
                f"member {d} was not tested on this {split} split ({bundle.source}): members must "
                "share the data they were trained and tested on"
            )
    x, y = bundle.split(split)
    probs = [predict_probs(model, x) for _, model in members]
    result = {
        "split": split,
        "dataset": cfg.dataset,
        "members": [
            {
                "run": str(d),
                "arch": c.arch,
                **{
                    k: v
                    for k, v in classification_metrics(y, p, bundle.label_names).items()
                    if k in ("accuracy", "loss", "f1", "auc")
                },
            }
            for d, c, p in zip(run_dirs, cfgs, probs)
        ],
        split: classification_metrics(y, np.mean(probs, axis=0), bundle.label_names),
    }
    return result
