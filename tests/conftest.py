"""Shared test set-up: quiet TensorFlow, no downloads, small fixture files in the real layouts."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["KERAS_DIGITS_OFFLINE"] = "1"  # no test may reach the network

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def real_data_dir() -> Path | None:
    """Where the real mnist.npz lives (../shared/data or $KERAS_DIGITS_DATA), else None."""
    for cand in (os.environ.get("KERAS_DIGITS_DATA"), SHARED_DATA):
        if cand and (Path(cand) / "mnist.npz").is_file():
            return Path(cand)
    return None


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch):
    """Library caches point at an empty folder, so no test sees a user's cached data or weights."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("KERAS_HOME", str(home / ".keras"))
    monkeypatch.setenv("TFDS_DATA_DIR", str(home / "tensorflow_datasets"))
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("KERAS_DIGITS_DATA", raising=False)
    monkeypatch.delenv("KERAS_DIGITS_CACHE", raising=False)
    yield


def make_images(n: int, shape: tuple[int, ...], num_classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Learnable uint8 images: each class is a bright square at its own place, plus noise."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % num_classes
    rng.shuffle(y)
    x = rng.integers(0, 40, size=(n, *shape), dtype=np.uint8)
    h, w = shape[0], shape[1]
    cell = max(1, min(h, w) // 4)
    for i, label in enumerate(y):
        r, c = divmod(int(label), 4)
        x[i, r * cell : (r + 1) * cell, c * cell : (c + 1) * cell] = 220
    return x, y.astype(np.uint8)


def conv_twins(cls, filters: int, kernel: int, input_shape: tuple, seed: int, **kwargs):
    """keras.layers.Conv2D and `cls` with the same options, built on `input_shape`, holding the same
    random weights (drawn with `seed`)."""
    import keras

    ref, new = keras.layers.Conv2D(filters, kernel, **kwargs), cls(filters, kernel, **kwargs)
    for layer in (ref, new):
        layer.build(input_shape)
    rng = np.random.default_rng(seed)
    new.set_weights([rng.normal(size=w.shape).astype("float32") for w in ref.get_weights()])
    ref.set_weights(new.get_weights())
    return ref, new


def value_and_grads(layer, x, dy) -> list[np.ndarray]:
    """layer(x), then the gradients of sum(layer(x) * dy) for x and for the layer's trainable weights."""
    import tensorflow as tf

    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x)
        loss = tf.reduce_sum(y * dy)
    return [v.numpy() for v in (y, *tape.gradient(loss, [x, *layer.trainable_weights]))]


@pytest.fixture
def mnist_like_dir(tmp_path) -> Path:
    """A small mnist.npz in Keras layout."""
    x_tr, y_tr = make_images(300, (28, 28), 10, seed=1)
    x_te, y_te = make_images(100, (28, 28), 10, seed=2)
    np.savez_compressed(tmp_path / "mnist.npz", x_train=x_tr, y_train=y_tr, x_test=x_te, y_test=y_te)
    return tmp_path


@pytest.fixture
def pathmnist_dir(tmp_path) -> Path:
    """A small pathmnist.npz in MedMNIST layout ((N, 28, 28, 3) images, (N, 1) labels)."""
    arrays = {}
    for i, (split, n) in enumerate((("train", 180), ("val", 45), ("test", 45))):
        x, y = make_images(n, (28, 28, 3), 9, seed=10 + i)
        arrays[f"{split}_images"] = x
        arrays[f"{split}_labels"] = y.reshape(-1, 1)
    np.savez_compressed(tmp_path / "pathmnist.npz", **arrays)
    return tmp_path


# ---------------------------------------------------------------------------- a tiny exported model
def build_tiny_export(base: Path) -> dict[str, Path]:
    """Train a tiny simple_cnn_v1 run on a learnable mnist.npz and export it to base/saved_models/tiny/1.

    Done once per test session (both export and predict tests use it): the result is kept under `base`."""
    paths = {"data": base / "data", "run": base / "run", "models": base / "saved_models" / "tiny"}
    paths["model"] = paths["models"] / "1"
    if (base / "done").exists():
        return paths
    if base.exists():
        shutil.rmtree(base)
    paths["data"].mkdir(parents=True)
    x_tr, y_tr = make_images(300, (28, 28), 10, seed=1)
    x_te, y_te = make_images(100, (28, 28), 10, seed=2)
    np.savez_compressed(paths["data"] / "mnist.npz", x_train=x_tr, y_train=y_tr, x_test=x_te, y_test=y_te)
    from keras_digits.config import TrainConfig
    from keras_digits.serving.export_run import export_run
    from keras_digits.training.run import train_and_evaluate

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KERAS_HOME", str(base / "keras_home"))
        mp.setenv("KERAS_DIGITS_OFFLINE", "1")
        cfg = TrainConfig(arch="simple_cnn_v1", dataset="mnist", data_dir=str(paths["data"]), epochs=2, verbose=0)
        train_and_evaluate(cfg, paths["run"])
        export_run(paths["run"], paths["models"], version=1)
    (base / "done").write_text("ok\n")
    return paths


def tiny_test_split(paths: dict[str, Path]) -> tuple[np.ndarray, np.ndarray]:
    """The test split of the tiny run: uint8 (N, 28, 28, 1) images and labels."""
    with np.load(paths["data"] / "mnist.npz") as d:
        return d["x_test"][..., None], d["y_test"].astype(int)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    """The tiny exported run (built once per session, see build_tiny_export)."""
    return build_tiny_export(tmp_path_factory.getbasetemp() / "tiny_export")


def run_main(main, args, capsys) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of a CLI `main` run through run_cli with `args` (made strings)."""
    from keras_digits.utils.cli import run_cli

    code = run_cli(main, [str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    return lines[0]


def free_ports(n: int) -> list[int]:
    """n loopback ports free right now (for multi-worker and tuner tests)."""
    import socket

    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def tf_config(ports: list[int], index: int) -> str:
    """TF_CONFIG for worker `index` of a loopback cluster on `ports`."""
    import json

    return json.dumps(
        {"cluster": {"worker": [f"localhost:{p}" for p in ports]}, "task": {"type": "worker", "index": index}}
    )


@pytest.fixture(scope="session")
def planted_model():
    """(model, test images, labels) of tests/planted.py, trained once per session."""
    from planted import train_planted

    return train_planted()
