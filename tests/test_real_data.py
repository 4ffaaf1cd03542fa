"""Short training on the real MNIST file (../shared/data/mnist.npz or $KERAS_DIGITS_DATA).

Run with `python -m pytest -m real_data`; skipped when the file is absent.
"""

from __future__ import annotations

import json

import pytest
from conftest import real_data_dir

from keras_digits.train import main as train_main

pytestmark = pytest.mark.real_data


@pytest.fixture
def mnist_dir():
    d = real_data_dir()
    if d is None:
        pytest.skip("real mnist.npz not found in ../shared/data or $KERAS_DIGITS_DATA")
    return d


def test_real_mnist_loads_with_published_statistics(mnist_dir):
    import numpy as np

    from keras_digits.data import load_dataset

    b = load_dataset("mnist", mnist_dir, val_split=0.1)
    assert len(b.train[1]) == 54_000 and len(b.val[1]) == 6_000 and len(b.test[1]) == 10_000
    assert np.bincount(b.test[1]).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_simple_cnn_learns_real_mnist_quickly(mnist_dir, tmp_path):
    run = tmp_path / "run"
    assert (
        train_main(
            [
                "--arch",
                "simple_cnn_v1",
                "--dataset",
                "mnist",
                "--data-dir",
                str(mnist_dir),
                "--epochs",
                "1",
                "--max-train-samples",
                "6000",
                "--batch-size",
                "64",
                "--run-dir",
                str(run),
                "--verbose",
                "0",
            ]
        )
        == 0
    )
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test"]["n"] == 10_000
    assert metrics["test"]["accuracy"] > 0.90
