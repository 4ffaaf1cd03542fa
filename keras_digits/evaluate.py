"""Metrics on a split (accuracy, loss, macro P/R/F1, per class, confusion matrix, one-vs-rest AUC)
and `python -m keras_digits.evaluate --run DIR [--split test]`, which re-scores a saved run; with
--dataset/--perturb/--preprocess/--label-map it scores it elsewhere (keras_digits.crossdata)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from keras_digits.cli import one_line, quiet_tensorflow, run_cli
from keras_digits.errors import KerasDigitsError
from keras_digits.io import read_json_object, write_json


def classification_metrics(y_true: np.ndarray, probs: np.ndarray, label_names: Sequence[str]) -> dict:
    """Every metric of the run format from labels and predicted probabilities."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    from keras_digits.auc import macro_auc

    y_true = np.asarray(y_true).astype(int)
    probs = np.asarray(probs, dtype=np.float64)
    n_classes = probs.shape[1]
    labels = list(range(n_classes))
    bad_rows = ~np.isfinite(probs).all(axis=1)  # a broken model: scored as wrong, never a crash
    if bad_rows.any():
        probs = probs.copy()
        probs[bad_rows] = 0.0
    pred = np.where(bad_rows, -1, probs.argmax(axis=1))
    eps = 1e-7
    loss = float(-np.mean(np.log(np.clip(probs[np.arange(len(y_true)), y_true], eps, 1.0))))
    p, r, f, s = precision_recall_fscore_support(y_true, pred, labels=labels, zero_division=0)
    mp, mr, mf, _ = precision_recall_fscore_support(y_true, pred, labels=labels, average="macro", zero_division=0)
    cm = confusion_matrix(y_true, pred, labels=labels)
    auc = None if bad_rows.any() else macro_auc(y_true, probs)  # no AUC from non-finite scores
    names = list(label_names) if len(label_names) == n_classes else [str(i) for i in labels]
    return {
        "n": int(len(y_true)),
        "accuracy": float((pred == y_true).mean()),
        "loss": loss,
        "precision": float(mp),
        "recall": float(mr),
        "f1": float(mf),
        "auc": auc,
        "per_class": [
            {"class_id": i, "label": names[i], "precision": float(p[i]), "recall": float(r[i]),
             "f1": float(f[i]), "support": int(s[i])}
            for i in labels
        ],
        "confusion_matrix": cm.tolist(),
        **({"nonfinite_outputs": int(bad_rows.sum())} if bad_rows.any() else {}),
    }


def predict_probs(model, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Softmax outputs for uint8 images, batched, no progress bar."""
    from keras_digits.data.pipeline import make_pipeline

    ds = make_pipeline(x, np.zeros(len(x), np.int32), batch_size).map(lambda a, b: a)
    return np.asarray(model.predict(ds, verbose=0))


def evaluate_model(model, x: np.ndarray, y: np.ndarray, label_names: Sequence[str], batch_size: int = 256,
                   keep: tuple[Path, str] | None = None) -> dict:
    """Run the model on a split and compute its metrics; with `keep=(run_dir, split)` also write the
    split's predictions and gallery examples there (keras_digits.predictions), for the run's page."""
    probs = predict_probs(model, x, batch_size)
    if keep is not None:
        from keras_digits.predictions import save_predictions

        save_predictions(keep[0], keep[1], x, y, probs)
    return classification_metrics(y, probs, label_names)


def load_run(run_dir: str | Path, finished: bool = True):
    """(config dict, keras model) of a finished run directory (`finished=False`: one whose training
    ended, being scored); an unfinished or diverged run, a missing or corrupt model file and a model
    with non-finite weights are one clear error each."""
    from keras_digits.rundir import divergence_text, ended, is_diverged

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise KerasDigitsError(f"run directory not found: {run_dir}")
    cfg_path, model_path = run_dir / "config.json", run_dir / "best.keras"
    if not cfg_path.is_file():
        raise KerasDigitsError(f"{run_dir} is not a run directory (no config.json)")
    metrics = ended(run_dir)
    if is_diverged(metrics):
        raise KerasDigitsError(f"{run_dir} diverged at {divergence_text(metrics)} and kept no model; train it again "
                               "with other settings (e.g. a lower --lr)")
    if finished and metrics is None:
        raise KerasDigitsError(f"{run_dir} has not finished training (no metrics.json); run its train command again "
                               "to resume it")
    if not model_path.is_file():
        raise KerasDigitsError(f"{run_dir} has no best.keras (did training finish?)")
    import zipfile

    if not zipfile.is_zipfile(model_path):
        raise KerasDigitsError(f"{model_path} is not a Keras model file (corrupt or truncated?)")
    import keras

    import keras_digits.models  # noqa: F401  (registers custom layers for deserialisation)
    from keras_digits.finite import describe_nonfinite, nonfinite_variables

    try:
        model = keras.models.load_model(model_path, compile=False)
    except Exception as exc:  # Keras raises many types for a broken archive
        raise KerasDigitsError(f"cannot load {model_path}: {type(exc).__name__}: {one_line(str(exc))[:300]}") from None
    bad = nonfinite_variables(model.weights)
    if bad:
        raise KerasDigitsError(f"{model_path} holds non-finite values in {describe_nonfinite(bad)}: a diverged model; "
                               "train it again with other settings")
    return read_json_object(cfg_path), model


def check_compatible(model, record: dict, bundle, what: str) -> None:
    """Refuse, as one clear error, to score `model` (trained on the data `record` describes: a run's
    dataset.json) on `bundle` when their label names, class count or image shape differ."""
    outputs = int(model.outputs[0].shape[-1])
    if bundle.num_classes != outputs:
        raise KerasDigitsError(f"{what}: the model has {outputs} classes, the data ({bundle.source}) has "
                               f"{bundle.num_classes}")
    trained = [str(n) for n in record.get("label_names") or []]
    if trained and trained != [str(n) for n in bundle.label_names]:
        diff = [f"{a!r} vs {b!r}" for a, b in zip(trained, bundle.label_names, strict=False) if a != str(b)][:3]
        raise KerasDigitsError(f"{what}: the model was trained on labels {trained}, the data ({bundle.source}) has "
                               f"{list(bundle.label_names)} (first differences: {', '.join(diff)})")
    shape = tuple(int(d) for d in model.inputs[0].shape[1:])
    if shape != tuple(bundle.input_shape):
        raise KerasDigitsError(f"{what}: the model takes images of shape {shape}, the data ({bundle.source}) has "
                               f"{tuple(bundle.input_shape)}")


def same_data(record: dict, bundle, split: str) -> bool:
    """Whether `bundle`'s split is the one the run recorded (fingerprint; older runs: source and size)."""
    from keras_digits.data.fingerprint import split_fingerprint

    recorded = (record.get("fingerprints") or {}).get(split)
    if recorded is not None:
        return recorded == split_fingerprint(*bundle.split(split))
    size = (record.get("sizes") or {}).get(split)
    return record.get("source") == bundle.source and size == len(bundle.split(split)[1])


def other_metrics_path(run_dir: Path, bundle) -> Path:
    """metrics-<dataset>[-<folder>]-<test fingerprint>.json: where scores on data other than the run's own
    go (the fingerprint keeps two trees whose folders share a name apart); the name `evaluate --dataset`
    gives the same scoring (keras_digits.crossdata.scoring_name), so the two share one file."""
    from keras_digits.crossdata import scoring_name
    from keras_digits.data.fingerprint import split_fingerprint

    what = scoring_name(bundle.name, bundle.source, split_fingerprint(*bundle.test), None, False)
    return run_dir / f"metrics-{bundle.name}-{what}.json"


def rescore_run(run_dir: str | Path, splits: Sequence[str], data_dir: str | None = None) -> tuple[dict, Path]:
    """Recompute a saved run's metrics on the given splits; returns (metrics, file written).

    Scores on the run's own data are merged into metrics.json; scores on other data (another --data-dir
    whose splits differ from those recorded in dataset.json) go to metrics-<dataset>[-<folder>]-<fingerprint>.json,
    so the run's own figures are never replaced by figures on something else (nor those by another scoring's)."""
    from keras_digits.config import TrainConfig
    from keras_digits.data import load_for
    from keras_digits.io import check_output_dir
    from keras_digits.lock import hold
    from keras_digits.rundir import dataset_record

    run_dir = Path(run_dir)
    cfg_dict, model = load_run(run_dir)
    cfg = TrainConfig.from_dict(cfg_dict)
    check_output_dir(run_dir, "run directory")
    bundle = load_for(cfg, data_dir)
    record = dataset_record(run_dir)
    check_compatible(model, record, bundle, f"cannot score {run_dir} on {bundle.name}")
    own = all(same_data(record, bundle, split) for split in splits)
    with hold(run_dir, "run directory"):
        if own:
            path = run_dir / "metrics.json"
            metrics = read_json_object(path) if path.is_file() else {}
        else:  # the file of this data (never one holding another scoring: keras_digits.crossdata.result_path)
            from keras_digits.crossdata import result_path
            from keras_digits.data.fingerprint import split_fingerprint

            head = {"dataset": bundle.name, "source": bundle.source, "preprocess": "none", "trained_on": cfg.dataset,
                    "fingerprints": {s: split_fingerprint(*bundle.split(s)) for s in splits}}
            path, metrics = result_path(run_dir, other_metrics_path(run_dir, bundle).stem, head)
            metrics.update({**head, "fingerprints": {**(metrics.get("fingerprints") or {}), **head["fingerprints"]}})
        for split in splits:
            x, y = bundle.split(split)
            # the page's curves and galleries follow the run's own latest scores, not other data's
            metrics[split] = evaluate_model(model, x, y, bundle.label_names, keep=(run_dir, split) if own else None)
        write_json(path, metrics)
        from keras_digits.html_report import write_run_page

        write_run_page(run_dir)  # every command that adds results to a run updates its page
    return metrics, path


def build_parser() -> argparse.ArgumentParser:
    from keras_digits.data.adapt import PREPROCESS
    from keras_digits.data.corrupt import LEVELS

    p = argparse.ArgumentParser(
        prog="python -m keras_digits.evaluate",
        description="Re-score a saved run on its own splits, on another dataset (--dataset), or under "
                    "corruptions (--perturb).",
        epilog="corruptions (severity 1..5 unless noted): " + ", ".join(
            f"{k}" + ("" if len(v) > 1 else " (one level, colour only)") for k, v in LEVELS.items())
            + "; NAME alone runs every severity, all runs every corruption.")
    p.add_argument("--run", required=True, help="run directory written by keras_digits.train")
    p.add_argument("--split", action="append", choices=("train", "val", "test"),
                   help="split(s) to score (repeatable; default test)")
    p.add_argument("--data-dir", help="override the run's data directory (or the --dataset's)")
    p.add_argument("--dataset", help="score on this dataset instead (writes metrics-<dataset>-<data fingerprint>"
                                     "[-map-<hash>][-digit].json: one file per data, label map and preprocessing)")
    p.add_argument("--preprocess", choices=PREPROCESS,
                   help="digit-normalise the images first (MNIST-style); auto (the default with --dataset): "
                        "digit for models trained on mnist; none is the default otherwise. Given alone, the "
                        "run's own split is scored this way into metrics-<dataset>-<fingerprint>[-digit].json")
    p.add_argument("--label-map", metavar="FILE.json",
                   help="JSON object renaming the dataset's labels to the model's ({\"zero\": \"0\", ...})")
    p.add_argument("--perturb", nargs="+", metavar="NAME[:SEVERITY]",
                   help="score under corruptions (adds rows to robustness-<dataset>-<split>-<fingerprint>"
                        "[-digit]-seed<N>.json; progress on stderr)")
    p.add_argument("--seed", type=int, default=0, help="seed of the corruptions (default 0)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_tensorflow()
    splits = list(dict.fromkeys(args.split or ["test"]))
    if args.dataset or args.perturb or args.preprocess or args.label_map:
        return score_elsewhere_cli(args, splits)
    metrics, path = rescore_run(args.run, splits, args.data_dir)
    if path.name != "metrics.json":
        print(f"note: {metrics['source']} is not the data this run was trained and tested on; "
              f"its scores go to {path}, not metrics.json", file=sys.stderr)
    for split in splits:
        m = metrics[split]
        auc = "" if m["auc"] is None else f"  auc {m['auc']:.4f}"
        print(f"{split}: accuracy {m['accuracy']:.4f}  loss {m['loss']:.4f}  macro-F1 {m['f1']:.4f}{auc}")
    return 0


def score_elsewhere_cli(args, splits: Sequence[str]) -> int:
    from keras_digits.crossdata import robustness_markdown, score_elsewhere

    if args.seed < 0:
        raise KerasDigitsError(f"--seed must be 0 or more, got {args.seed}")
    if len(splits) != 1:
        raise KerasDigitsError("--dataset/--perturb score one split at a time; give one --split")
    # default: auto on another dataset; none for the run's own data (so the clean row is its own score)
    preprocess = args.preprocess or ("auto" if args.dataset else "none")
    result, path = score_elsewhere(args.run, args.dataset, args.data_dir, splits[0], preprocess,
                                   args.label_map, args.perturb, args.seed,
                                   progress=lambda line: print(line, file=sys.stderr, flush=True))
    what = f"{result['dataset']} {splits[0]} ({result['preprocess']} preprocessing)"
    if "rows" in result:
        print(f"robustness on {what}, {result['n']} images:\n{robustness_markdown(result)}")
    else:
        m = result[splits[0]]
        print(f"{what}: accuracy {m['accuracy']:.4f}  loss {m['loss']:.4f}  macro-F1 {m['f1']:.4f}")
    print(f"written to {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
