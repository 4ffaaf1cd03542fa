"""Opening finished runs and re-scoring them: the model, its data's record, compatibility checks."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from keras_digits.errors import KerasDigitsError
from keras_digits.evaluation.metrics import evaluate_model
from keras_digits.utils.cli import one_line
from keras_digits.utils.io import read_json_object, write_json


def load_run(run_dir: str | Path, finished: bool = True):
    """(config dict, keras model) of a finished run directory (`finished=False`: one whose training
    ended, being scored); an unfinished or diverged run, a missing or corrupt model file and a model
    with non-finite weights are one clear error each."""
    from keras_digits.evaluation.records import divergence_text, ended, is_diverged

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise KerasDigitsError(f"run directory not found: {run_dir}")
    cfg_path, model_path = run_dir / "config.json", run_dir / "best.keras"
    if not cfg_path.is_file():
        raise KerasDigitsError(f"{run_dir} is not a run directory (no config.json)")
    metrics = ended(run_dir)
    if is_diverged(metrics):
        raise KerasDigitsError(
            f"{run_dir} diverged at {divergence_text(metrics)} and kept no model; train it again "
            "with other settings (e.g. a lower --lr)"
        )
    if finished and metrics is None:
        raise KerasDigitsError(
            f"{run_dir} has not finished training (no metrics.json); run its train command again to resume it"
        )
    if not model_path.is_file():
        raise KerasDigitsError(f"{run_dir} has no best.keras (did training finish?)")
    import zipfile

    if not zipfile.is_zipfile(model_path):
        raise KerasDigitsError(f"{model_path} is not a Keras model file (corrupt or truncated?)")
    import keras

    import keras_digits.models  # noqa: F401  (registers custom layers for deserialisation)
    from keras_digits.utils.finite import describe_nonfinite, nonfinite_variables

    try:
        model = keras.models.load_model(model_path, compile=False)
    except Exception as exc:  # Keras raises many types for a broken archive
        raise KerasDigitsError(f"cannot load {model_path}: {type(exc).__name__}: {one_line(str(exc))[:300]}") from None
    bad = nonfinite_variables(model.weights)
    if bad:
        raise KerasDigitsError(
            f"{model_path} holds non-finite values in {describe_nonfinite(bad)}: a diverged model; "
            "train it again with other settings"
        )
    return read_json_object(cfg_path), model


def check_compatible(model, record: dict, bundle, what: str) -> None:
    """Refuse, as one clear error, to score `model` (trained on the data `record` describes: a run's
    dataset.json) on `bundle` when their label names, class count or image shape differ."""
    outputs = int(model.outputs[0].shape[-1])
    if bundle.num_classes != outputs:
        raise KerasDigitsError(
            f"{what}: the model has {outputs} classes, the data ({bundle.source}) has {bundle.num_classes}"
        )
    trained = [str(n) for n in record.get("label_names") or []]
    if trained and trained != [str(n) for n in bundle.label_names]:
        diff = [f"{a!r} vs {b!r}" for a, b in zip(trained, bundle.label_names, strict=False) if a != str(b)][:3]
        raise KerasDigitsError(
            f"{what}: the model was trained on labels {trained}, the data ({bundle.source}) has "
            f"{list(bundle.label_names)} (first differences: {', '.join(diff)})"
        )
    shape = tuple(int(d) for d in model.inputs[0].shape[1:])
    if shape != tuple(bundle.input_shape):
        raise KerasDigitsError(
            f"{what}: the model takes images of shape {shape}, the data ({bundle.source}) has "
            f"{tuple(bundle.input_shape)}"
        )


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
    gives the same scoring (keras_digits.evaluation.results.scoring_name), so the two share one file."""
    from keras_digits.data.fingerprint import split_fingerprint
    from keras_digits.evaluation.results import scoring_name

    what = scoring_name(bundle.name, bundle.source, split_fingerprint(*bundle.test), None, False)
    return run_dir / f"metrics-{bundle.name}-{what}.json"


def rescore_run(run_dir: str | Path, splits: Sequence[str], data_dir: str | None = None) -> tuple[dict, Path]:
    """Recompute a saved run's metrics on the given splits; returns (metrics, file written).

    Scores on the run's own data are merged into metrics.json; scores on other data (another --data-dir
    whose splits differ from those recorded in dataset.json) go to metrics-<dataset>[-<folder>]-<fingerprint>.json,
    so the run's own figures are never replaced by figures on something else (nor those by another scoring's)."""
    from keras_digits.config import TrainConfig
    from keras_digits.data import load_for
    from keras_digits.evaluation.records import dataset_record
    from keras_digits.utils.io import check_output_dir
    from keras_digits.utils.lock import hold

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
        else:  # the file of this data (never one holding another scoring: keras_digits.evaluation.results.result_path)
            from keras_digits.data.fingerprint import split_fingerprint
            from keras_digits.evaluation.results import result_path

            head = {
                "dataset": bundle.name,
                "source": bundle.source,
                "preprocess": "none",
                "trained_on": cfg.dataset,
                "fingerprints": {s: split_fingerprint(*bundle.split(s)) for s in splits},
            }
            path, metrics = result_path(run_dir, other_metrics_path(run_dir, bundle).stem, head)
            metrics.update({**head, "fingerprints": {**(metrics.get("fingerprints") or {}), **head["fingerprints"]}})
        for split in splits:
            x, y = bundle.split(split)
            # the page's curves and galleries follow the run's own latest scores, not other data's
            metrics[split] = evaluate_model(model, x, y, bundle.label_names, keep=(run_dir, split) if own else None)
        write_json(path, metrics)
        from keras_digits.reporting.html import write_run_page

        write_run_page(run_dir)  # every command that adds results to a run updates its page
    return metrics, path
