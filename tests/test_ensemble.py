"""Ensembles average members' softmax outputs on a split none of them trained on."""

from __future__ import annotations

import json

import numpy as np
import pytest

from keras_digits.ensemble import main as ensemble_main
from keras_digits.errors import KerasDigitsError
from keras_digits.evaluation.ensemble import ensemble_runs
from keras_digits.train import main as train_main


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ens")
    runs = []
    for arch, seed in (("simple_cnn_v1", 1), ("dense", 2)):
        run = root / f"{arch}-{seed}"
        assert (
            train_main(
                [
                    "--arch",
                    arch,
                    "--epochs",
                    "3",
                    "--seed",
                    str(seed),
                    "--run-dir",
                    str(run),
                    "--verbose",
                    "0",
                    "--batch-size",
                    "64",
                    "--lr",
                    "3e-3",
                ]
            )
            == 0
        )
        runs.append(run)
    return runs


def test_ensemble_metrics_beside_members(two_runs, tmp_path):
    out = tmp_path / "ens"
    assert ensemble_main(["--runs", *map(str, two_runs), "--out", str(out)]) == 0
    result = json.loads((out / "metrics.json").read_text())
    assert result["split"] == "test" and len(result["members"]) == 2
    ens = result["test"]
    assert ens["n"] == 359 and {"accuracy", "loss", "f1", "auc", "confusion_matrix"} <= set(ens)
    member_test = [json.loads((r / "metrics.json").read_text())["test"]["accuracy"] for r in two_runs]
    np.testing.assert_allclose([m["accuracy"] for m in result["members"]], member_test, atol=1e-9)


def test_ensemble_is_the_mean_of_softmax(two_runs):
    from keras_digits.data import load_dataset
    from keras_digits.evaluation.metrics import predict_probs
    from keras_digits.evaluation.runs import load_run

    x, y = load_dataset("digits").test
    probs = [predict_probs(load_run(r)[1], x) for r in two_runs]
    expected = float((np.mean(probs, axis=0).argmax(1) == y).mean())
    assert ensemble_runs(two_runs)["test"]["accuracy"] == pytest.approx(expected)


def test_ensemble_refuses_seen_splits_and_single_member(two_runs):
    with pytest.raises(KerasDigitsError, match="at least two"):
        ensemble_runs(two_runs[:1])
    for split in ("train", "val"):  # members trained on train and chose their checkpoints on val
        with pytest.raises(KerasDigitsError, match="score an ensemble on test"):
            ensemble_runs(two_runs, split=split)
