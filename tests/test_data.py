"""The data layer: every source kind from small files in its real layout, validation, splits, pipelines."""

from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
from conftest import make_images

from keras_digits.data import get_spec, list_datasets, load_dataset, stratified_split
from keras_digits.data.base import file_md5
from keras_digits.errors import KerasDigitsError


def test_registry_lists_required_datasets():
    assert {"mnist", "pathmnist", "cifar10", "svhn", "digits", "folder"} <= set(list_datasets())
    spec = get_spec("pathmnist")
    assert spec.num_classes == 9 and len(spec.label_names) == 9 and spec.official_val
    assert spec.checksums["pathmnist.npz"] == "md5:a8b06965200029087d5bd730944a56c1"
    with pytest.raises(KerasDigitsError, match="known: .*mnist"):
        get_spec("imagenet")


def test_digits_is_embedded_and_split_without_overlap():
    b = load_dataset("digits", val_split=0.1, seed=3)
    assert b.input_shape == (28, 28, 1) and b.num_classes == 10
    sizes = [len(b.train[1]), len(b.val[1]), len(b.test[1])]
    assert sum(sizes) == 1797 and sizes[2] == 359
    assert b.train[0].dtype == np.uint8 and b.train[0].max() > 200
    # the test split is fixed whatever the run seed
    b2 = load_dataset("digits", val_split=0.1, seed=99)
    np.testing.assert_array_equal(b.test[0], b2.test[0])
    assert not np.array_equal(b.val[0], b2.val[0])


def test_mnist_npz_layout_and_val_split(mnist_like_dir):
    b = load_dataset("mnist", mnist_like_dir, val_split=0.2, seed=0)
    assert len(b.train[1]) == 240 and len(b.val[1]) == 60 and len(b.test[1]) == 100
    assert b.input_shape == (28, 28, 1)
    # stratified: every class keeps its share in val
    assert np.bincount(b.val[1], minlength=10).min() == 6


def test_data_dir_from_environment(mnist_like_dir, monkeypatch):
    monkeypatch.setenv("KERAS_DIGITS_DATA", str(mnist_like_dir))
    assert len(load_dataset("mnist").test[1]) == 100


def test_max_train_samples_is_stratified(mnist_like_dir):
    b = load_dataset("mnist", mnist_like_dir, max_train_samples=100)
    assert len(b.train[1]) == 100
    assert np.bincount(b.train[1]).min() >= 9


def test_keras_cache_is_used(mnist_like_dir, tmp_path, monkeypatch):
    cache = tmp_path / "kh" / "datasets"
    cache.mkdir(parents=True)
    (cache / "mnist.npz").write_bytes((mnist_like_dir / "mnist.npz").read_bytes())
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "kh"))
    assert len(load_dataset("mnist").train[1]) == 270


def test_missing_mnist_names_file_and_places(tmp_path):
    with pytest.raises(KerasDigitsError) as err:
        load_dataset("mnist", tmp_path)
    msg = str(err.value)
    assert "mnist.npz" in msg and str(tmp_path) in msg and "--data-dir" in msg and "https://" in msg


def test_download_path_reaches_keras_when_online(tmp_path, monkeypatch):
    """Offline switch off: the loader asks keras.datasets (stubbed here: no network in tests)."""
    import keras

    monkeypatch.delenv("KERAS_DIGITS_OFFLINE")
    calls = []

    def fake_load_data():
        calls.append(1)
        x, y = make_images(50, (28, 28), 10)
        return (x, y), (x[:20], y[:20])

    monkeypatch.setattr(keras.datasets.mnist, "load_data", fake_load_data)
    b = load_dataset("mnist", tmp_path, val_split=0.2)
    assert calls and len(b.test[1]) == 20

    def failing():
        raise OSError("no network")

    monkeypatch.setattr(keras.datasets.mnist, "load_data", failing)
    with pytest.raises(KerasDigitsError, match="download failed"):
        load_dataset("mnist", tmp_path)


@pytest.mark.parametrize(
    "problem,match",
    [
        ("truncated", "not a readable npz"),
        ("keys", "lacks key"),
        ("dtype", "must be uint8"),
        ("labels", r"labels must lie in \[0, 9\]"),
        ("shape", "shape"),
        ("count", "images but"),
    ],
)
def test_bad_mnist_files(tmp_path, problem, match):
    x, y = make_images(40, (28, 28), 10)
    arrays = dict(x_train=x, y_train=y, x_test=x[:10], y_test=y[:10])
    path = tmp_path / "mnist.npz"
    if problem == "keys":
        arrays.pop("y_test")
    elif problem == "dtype":
        arrays["x_train"] = x.astype(np.float32)
    elif problem == "labels":
        arrays["y_train"] = y + 5
    elif problem == "shape":
        arrays["x_train"] = x[:, :, :20]
    elif problem == "count":
        arrays["y_train"] = y[:-3]
    np.savez_compressed(path, **arrays)
    if problem == "truncated":
        path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(KerasDigitsError, match=match):
        load_dataset("mnist", tmp_path)


def test_pathmnist_official_splits(pathmnist_dir):
    b = load_dataset("pathmnist", pathmnist_dir, val_split=0.5)
    assert [len(b.train[1]), len(b.val[1]), len(b.test[1])] == [180, 45, 45]
    assert b.input_shape == (28, 28, 3) and b.label_names[0] == "adipose"


def test_pathmnist_cache_checksum_mismatch(pathmnist_dir, tmp_path, monkeypatch):
    home = tmp_path / "home"
    (home / ".medmnist").mkdir(parents=True)
    (home / ".medmnist" / "pathmnist.npz").write_bytes((pathmnist_dir / "pathmnist.npz").read_bytes())
    monkeypatch.setenv("HOME", str(home))
    with pytest.raises(KerasDigitsError, match="checksum mismatch"):
        load_dataset("pathmnist")


def test_pathmnist_download_verifies_md5(tmp_path, monkeypatch, pathmnist_dir):
    """Up to the network boundary: the published URL is fetched and its MD5 checked."""
    import keras_digits.data.medmnist as med

    monkeypatch.delenv("KERAS_DIGITS_OFFLINE")
    monkeypatch.setenv("HOME", str(tmp_path))
    seen = {}

    def fake_download(url, dest, md5=None, timeout=30.0):
        seen.update(url=url, md5=md5)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes((pathmnist_dir / "pathmnist.npz").read_bytes())
        return dest

    monkeypatch.setattr(med, "download_file", fake_download)
    monkeypatch.setattr(med, "verify_md5", lambda path, md5: None)  # our fixture is not the real file
    b = load_dataset("pathmnist")
    assert seen["url"].startswith("https://zenodo.org/") and seen["md5"] == "a8b06965200029087d5bd730944a56c1"
    assert len(b.test[1]) == 45


def test_pathmnist_wrong_channels(tmp_path):
    arrays = {}
    for split in ("train", "val", "test"):
        x, y = make_images(20, (28, 28), 9)
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = x, y.reshape(-1, 1)
    np.savez_compressed(tmp_path / "pathmnist.npz", **arrays)
    with pytest.raises(KerasDigitsError, match="1-channel images, expected 3"):
        load_dataset("pathmnist", tmp_path)


def _cifar_batch(n: int, seed: int) -> bytes:
    x, y = make_images(n, (32, 32, 3), 10, seed)
    return pickle.dumps({b"data": x.transpose(0, 3, 1, 2).reshape(n, -1), b"labels": y.tolist()})


@pytest.mark.parametrize("layout", ["tar", "dir"])
def test_cifar10_layouts(tmp_path, layout):
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    blobs = {name: _cifar_batch(20, i) for i, name in enumerate(names)}
    if layout == "tar":
        with tarfile.open(tmp_path / "cifar-10-python.tar.gz", "w:gz") as tar:
            for name, blob in blobs.items():
                info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
                info.size = len(blob)
                tar.addfile(info, io.BytesIO(blob))
    else:
        folder = tmp_path / "cifar-10-batches-py"
        folder.mkdir()
        for name, blob in blobs.items():
            (folder / name).write_bytes(blob)
    b = load_dataset("cifar10", tmp_path)
    assert b.input_shape == (32, 32, 3) and len(b.test[1]) == 20 and len(b.train[1]) + len(b.val[1]) == 100
    assert b.label_names[0] == "airplane"


def test_svhn_mat_layout_maps_10_to_0(tmp_path):
    import scipy.io

    for fname, n in (("train_32x32.mat", 60), ("test_32x32.mat", 20)):
        x, y = make_images(n, (32, 32, 3), 10)
        y_mat = np.where(y == 0, 10, y).reshape(-1, 1)
        scipy.io.savemat(tmp_path / fname, {"X": x.transpose(1, 2, 3, 0), "y": y_mat})
    b = load_dataset("svhn", tmp_path)
    assert b.input_shape == (32, 32, 3) and b.test[1].min() == 0 and b.test[1].max() == 9


def test_svhn_needs_both_files(tmp_path):
    import scipy.io

    x, y = make_images(10, (32, 32, 3), 10)
    scipy.io.savemat(tmp_path / "train_32x32.mat", {"X": x.transpose(1, 2, 3, 0), "y": y.reshape(-1, 1) + 1})
    with pytest.raises(KerasDigitsError, match="partner"):
        load_dataset("svhn", tmp_path)


def _write_tree(root: Path, per_class: int = 12, size=(40, 30)) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in ("cat_a", "cat_b", "cat_c"):
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            arr = rng.integers(0, 255, size=(*size, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / c / f"{i}.png")


def test_folder_tree_skips_bad_files(tmp_path, capsys):
    _write_tree(tmp_path)
    (tmp_path / "cat_a" / "notes.txt").write_text("hello")
    (tmp_path / "cat_b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    b = load_dataset("folder", tmp_path, image_size=16, val_split=0.2)
    assert b.input_shape == (16, 16, 3) and b.label_names == ("cat_a", "cat_b", "cat_c")
    assert len(b.train[1]) + len(b.val[1]) + len(b.test[1]) == 36
    err = capsys.readouterr().err
    assert "notes.txt" in err and "broken.png" in err
    assert err.count("broken.png") == 1  # said once, not as a warning and again as a summary


def test_folder_empty_class_is_an_error(tmp_path):
    _write_tree(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(KerasDigitsError, match="'empty'.*no readable images"):
        load_dataset("folder", tmp_path)


def test_missing_data_dir_is_clear(tmp_path):
    with pytest.raises(KerasDigitsError, match="data directory not found"):
        load_dataset("mnist", tmp_path / "nope")


def test_stratified_split_is_seeded_and_disjoint():
    y = np.repeat(np.arange(5), 20)
    x = np.arange(100)
    (a1, _), (h1, hy1) = stratified_split(x, y, 0.2, seed=1)
    (a2, _), (h2, _) = stratified_split(x, y, 0.2, seed=1)
    np.testing.assert_array_equal(h1, h2)
    assert not set(a1) & set(h1) and np.bincount(hy1).tolist() == [4] * 5


def test_pipeline_batches_are_uint8_and_cover_every_sample():
    from keras_digits.data.pipeline import make_pipeline

    x, y = make_images(70, (28, 28, 1), 10)
    batches = list(make_pipeline(x, y, 32, training=True, seed=1))
    assert [len(b[1]) for b in batches] == [32, 32, 6]
    assert batches[0][0].dtype.name == "uint8"
    seen = np.concatenate([b[1].numpy() for b in batches])
    assert sorted(seen.tolist()) == sorted(y.tolist())
    val = [b[0].numpy() for b in make_pipeline(x, y, 32)]
    np.testing.assert_array_equal(np.concatenate(val), x)


def test_file_md5(tmp_path):
    p = tmp_path / "f"
    p.write_bytes(b"abc")
    assert file_md5(p) == "900150983cd24fb0d6963f7d28e17f72"


def test_tiny_subsets_do_not_crash_stratification(mnist_like_dir):
    b = load_dataset("mnist", mnist_like_dir, max_train_samples=5)
    assert len(b.train[1]) == 5
