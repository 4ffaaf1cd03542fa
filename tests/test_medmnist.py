"""The MedMNIST family: every 2D subset registered, sizes 28-224 (memory-mapped above 28), ChestMNIST refused,
the benchmark's protocol in metrics.json; all on small files written here in MedMNIST's layout."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, make_images, one_error_line, run_main

from keras_digits.data import get_spec, list_datasets, load_dataset
from keras_digits.errors import KerasDigitsError

SUBSETS = (
    "pathmnist",
    "dermamnist",
    "octmnist",
    "pneumoniamnist",
    "retinamnist",
    "breastmnist",
    "bloodmnist",
    "tissuemnist",
    "organamnist",
    "organcmnist",
    "organsmnist",
    "chestmnist",
)


def write_medmnist(
    folder: Path, name: str, size: int = 28, n=(70, 28, 28), grey_2d: bool = True, image_size: int | None = None
) -> Path:
    """NAME.npz / NAME_SIZE.npz with learnable images; grey subsets as (N, H, W) like MedMNIST's files."""
    spec = get_spec(name)
    side = image_size or size
    channels = spec.image_shape[-1]
    shape = (side, side) if channels == 1 and grey_2d else (side, side, channels)
    arrays = {}
    for i, (split, count) in enumerate(zip(("train", "val", "test"), n)):
        x, y = make_images(count, shape, spec.num_classes, seed=20 + i)
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = x, y.reshape(-1, 1)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (f"{name}.npz" if size == 28 else f"{name}_{size}.npz")
    np.savez_compressed(path, **arrays)
    return path


def test_every_2d_subset_is_registered_from_medmnist_info():
    assert set(SUBSETS) <= set(list_datasets())
    derma = get_spec("dermamnist")
    assert derma.num_classes == 7 and derma.image_shape == (28, 28, 3) and derma.sizes == (28, 64, 128, 224)
    assert derma.checksums == {
        "dermamnist.npz": "md5:0744692d530f8e62ec473284d019b0c7",
        "dermamnist_64.npz": "md5:b70a2f5635c6199aeaa28c31d7202e1f",
        "dermamnist_128.npz": "md5:2defd784463fa5243564e855ed717de1",
        "dermamnist_224.npz": "md5:8974907d8e169bef5f5b96bc506ae45d",
    }
    assert get_spec("pathmnist").checksums["pathmnist_224.npz"] == "md5:2c51a510bcdc9cf8ddb2af93af1eadec"
    tasks = {n: get_spec(n).task for n in SUBSETS}
    assert tasks["chestmnist"] == "multi-label, binary-class" and tasks["retinamnist"] == "ordinal-regression"
    assert tasks["breastmnist"] == tasks["pneumoniamnist"] == "binary-class"
    assert {n: get_spec(n).image_shape[-1] for n in ("tissuemnist", "octmnist", "bloodmnist")} == {
        "tissuemnist": 1,
        "octmnist": 1,
        "bloodmnist": 3,
    }
    assert (
        get_spec("organamnist").num_classes == 11
        and get_spec("tissuemnist").label_names[0] == "Collecting Duct, Connecting Tubule"
    )


def test_rgb_subset_official_splits(tmp_path):
    write_medmnist(tmp_path, "dermamnist")
    b = load_dataset("dermamnist", tmp_path)
    assert [len(b.train[1]), len(b.val[1]), len(b.test[1])] == [70, 28, 28]
    assert b.input_shape == (28, 28, 3) and b.label_names[4] == "melanoma"
    assert not isinstance(b.train[0], np.memmap)  # 28 px is read into memory


def test_grey_subset_gets_a_channel_axis(tmp_path):
    write_medmnist(tmp_path, "tissuemnist")
    b = load_dataset("tissuemnist", tmp_path)
    assert b.input_shape == (28, 28, 1) and b.num_classes == 8


def test_large_size_is_memory_mapped_and_converted_once(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KERAS_DIGITS_CACHE", str(tmp_path / "cache"))
    src = write_medmnist(tmp_path / "data", "tissuemnist", size=64)
    b = load_dataset("tissuemnist", tmp_path / "data", size=64)
    x, y = b.train
    assert isinstance(x, np.memmap) and x.shape == (70, 64, 64, 1) and b.input_shape == (64, 64, 1)
    with np.load(src) as raw:
        np.testing.assert_array_equal(np.asarray(x)[..., 0], raw["train_images"])
        np.testing.assert_array_equal(b.test[1], raw["test_labels"][:, 0])
    assert "converting tissuemnist_64.npz once" in capsys.readouterr().err
    load_dataset("tissuemnist", tmp_path / "data", size=64)
    assert "converting" not in capsys.readouterr().err  # the cache is reused ...
    write_medmnist(tmp_path / "data", "tissuemnist", size=64, n=(60, 20, 20))
    b = load_dataset("tissuemnist", tmp_path / "data", size=64)
    assert "converting" in capsys.readouterr().err and len(b.train[1]) == 60  # ... until the file changes
    caches = tmp_path / "cache" / "npz"
    assert len(list(caches.glob("tissuemnist_64-*"))) == 1  # the old version's copy is gone
    assert not [p for p in caches.glob(".tissuemnist_64-*") if p.is_dir()]  # no half-written cache left


def test_memory_mapped_batches_equal_in_memory_batches(tmp_path, monkeypatch):
    from keras_digits.data.pipeline import epoch_variable, make_pipeline

    monkeypatch.setenv("KERAS_DIGITS_CACHE", str(tmp_path / "cache"))
    write_medmnist(tmp_path, "dermamnist", size=64)
    x, y = load_dataset("dermamnist", tmp_path, size=64).train
    epoch = epoch_variable()
    streamed = list(make_pipeline(x, y, 16, training=True, seed=3, epoch=epoch).as_numpy_iterator())
    held = list(make_pipeline(np.array(x), y, 16, training=True, seed=3, epoch=epoch).as_numpy_iterator())
    assert len(streamed) == len(held) == 5
    for (a, la), (b, lb) in zip(streamed, held):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(la, lb)


@pytest.mark.parametrize(
    "size,image_size,message",
    [
        (64, 28, "holds 28x28 images, expected 64x64"),
        (28, 64, "holds 64x64 images, expected 28x28"),
    ],
)
def test_file_of_the_wrong_size(tmp_path, size, image_size, message):
    write_medmnist(tmp_path, "dermamnist", size=size, image_size=image_size)
    with pytest.raises(KerasDigitsError, match=message):
        load_dataset("dermamnist", tmp_path, size=size)


def test_missing_large_file_names_file_and_url(tmp_path):
    with pytest.raises(KerasDigitsError) as exc:
        load_dataset("pathmnist", tmp_path, size=224)
    text = str(exc.value)
    assert "pathmnist_224.npz" in text and "https://zenodo.org/records/10519652/files/pathmnist_224.npz" in text


def test_size_for_a_dataset_without_sizes(mnist_like_dir):
    with pytest.raises(KerasDigitsError, match="mnist has one size"):
        load_dataset("mnist", mnist_like_dir, size=64)


def test_corrupt_member_of_a_large_file_is_one_error(tmp_path, monkeypatch):
    """A flipped byte inside a stored member fails its CRC while converting: one error, no cache left."""
    import zipfile

    monkeypatch.setenv("KERAS_DIGITS_CACHE", str(tmp_path / "cache"))
    x, y = make_images(40, (64, 64, 3), 7)
    path = tmp_path / "dermamnist_64.npz"
    np.savez(
        path,
        **{
            f"{s}_{k}": (x if k == "images" else y.reshape(-1, 1))
            for s in ("train", "val", "test")
            for k in ("images", "labels")
        },
    )
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("val_images.npy")
    data = bytearray(path.read_bytes())
    data[info.header_offset + 30 + len(info.filename) + 500] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(KerasDigitsError, match="val_images.*corrupt"):
        load_dataset("dermamnist", tmp_path, size=64)
    assert not [p for p in (tmp_path / "cache" / "npz").iterdir() if p.is_dir()]


def test_truncated_large_file_is_one_error(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_DIGITS_CACHE", str(tmp_path / "cache"))
    path = write_medmnist(tmp_path, "dermamnist", size=64)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(KerasDigitsError, match="not a readable npz"):
        load_dataset("dermamnist", tmp_path, size=64)


def test_large_size_download_up_to_the_network(tmp_path, monkeypatch):
    """The MedMNIST+ address for the size is fetched with its own published MD5."""
    import keras_digits.data.medmnist as med

    monkeypatch.delenv("KERAS_DIGITS_OFFLINE")
    monkeypatch.setenv("KERAS_DIGITS_CACHE", str(tmp_path / "cache"))
    src = write_medmnist(tmp_path / "src", "bloodmnist", size=128, n=(16, 8, 8))
    seen = {}

    def fake_download(url, dest, md5=None, timeout=30.0):
        seen.update(url=url, md5=md5)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(src.read_bytes())
        return dest

    monkeypatch.setattr(med, "download_file", fake_download)
    b = load_dataset("bloodmnist", size=128)
    assert seen == {
        "url": "https://zenodo.org/records/10519652/files/bloodmnist_128.npz?download=1",
        "md5": get_spec("bloodmnist").checksums["bloodmnist_128.npz"].removeprefix("md5:"),
    }
    assert b.input_shape == (128, 128, 3) and isinstance(b.train[0], np.memmap)


def test_real_download_refuses_a_wrong_file(tmp_path, monkeypatch):
    """download_file itself (urllib) against a local server-less URL: the MD5 check rejects other bytes."""
    from keras_digits.data.base import download_file

    monkeypatch.delenv("KERAS_DIGITS_OFFLINE")
    src = tmp_path / "x.npz"
    src.write_bytes(b"not the file")
    with pytest.raises(KerasDigitsError, match="checksum mismatch"):
        download_file(src.as_uri(), tmp_path / "out" / "x.npz", md5="0" * 32)
    assert not (tmp_path / "out" / "x.npz").exists()


def test_chestmnist_is_refused_in_one_line(tmp_path, capsys):
    from keras_digits.train import main

    write_medmnist(tmp_path, "chestmnist")
    code, _, err = run_main(
        main, ["--dataset", "chestmnist", "--data-dir", tmp_path, "--run-dir", tmp_path / "run"], capsys
    )
    line = one_error_line(err)
    assert code != 0 and "multi-label" in line and "single-label" in line
    assert not (tmp_path / "run").exists()


def test_medmnist_scores_follow_the_evaluator():
    from keras_digits.evaluation.medmnist_protocol import medmnist_scores

    y = np.array([0, 1, 1, 0])
    p1 = np.array([0.1, 0.9, 0.4, 0.6])
    binary = medmnist_scores(y, np.stack([1 - p1, p1], axis=1), "binary-class")
    assert binary == {"ACC": 0.5, "AUC": 0.75}  # 3 of 4 positive-negative pairs ordered; threshold 0.5
    probs = np.array([[0.7, 0.2, 0.1], [0.2, 0.5, 0.3], [0.1, 0.3, 0.6], [0.3, 0.6, 0.1]])
    multi = medmnist_scores(np.array([0, 1, 2, 0]), probs, "ordinal-regression")
    assert multi["ACC"] == 0.75
    # per-class one-vs-rest AUCs: class 0 -> 1.0, class 1 -> 2/3, class 2 -> 1.0
    assert multi["AUC"] == pytest.approx((1.0 + 2 / 3 + 1.0) / 3)


@pytest.mark.parametrize("name,size", [("breastmnist", 28), ("retinamnist", 64)])
def test_train_end_to_end_records_the_protocol(tmp_path, monkeypatch, capsys, name, size):
    from keras_digits.train import main

    monkeypatch.setenv("KERAS_DIGITS_CACHE", str(tmp_path / "cache"))
    write_medmnist(tmp_path / "data", name, size=size)
    run = tmp_path / "run"
    code, out, err = run_main(
        main,
        [
            "--dataset",
            name,
            "--size",
            size,
            "--data-dir",
            tmp_path / "data",
            "--arch",
            "simple_cnn_v1",
            "--epochs",
            2,
            "--batch-size",
            16,
            "--verbose",
            0,
            "--run-dir",
            run,
        ],
        capsys,
    )
    assert code == 0, err
    metrics = json.loads((run / "metrics.json").read_text())
    block = metrics["medmnist"]
    assert block["subset"] == name and block["size"] == size and block["task"] == get_spec(name).task
    assert block["test"]["ACC"] == pytest.approx(metrics["test"]["accuracy"])  # argmax = threshold 0.5 here
    assert block["test"]["AUC"] == pytest.approx(metrics["test"]["auc"])
    assert f"MedMNIST protocol ({name}, {size} px)" in out
    assert f"MedMNIST protocol ({name}, {size} px" in (run / "report.html").read_text()
    assert f"MedMNIST protocol ({name}, {size} px)" in (run / "report.md").read_text()
    assert json.loads((run / "config.json").read_text())["size"] == size
    assert json.loads((run / "dataset.json").read_text())["input_shape"] == [
        size,
        size,
        3 if name == "retinamnist" else 1,
    ]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_DATA binds on Linux only")
def test_streaming_stays_under_a_memory_cap(tmp_path):
    """A 64 px split of ~310 MB is converted, trained on, predicted and fingerprinted by a process whose
    data memory is capped at 200 MB above its warmed-up size; a full copy of the split is refused."""
    script = REPO / "benchmarks" / "medmnist_streaming.py"
    env = {
        "KERAS_DIGITS_CACHE": str(tmp_path / "cache"),
        "HOME": str(tmp_path),
        "PATH": "/usr/bin:/bin",
        "KERAS_DIGITS_OFFLINE": "1",
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    subprocess.run(
        [sys.executable, script, "--write", tmp_path / "data", "--train", "80000", "--eval", "256"],
        check=True,
        env=env,
        capture_output=True,
    )
    assert (tmp_path / "data" / "organamnist_64.npz").stat().st_size > 300 * 2**20
    done = subprocess.run(
        [
            sys.executable,
            script,
            "--data-dir",
            tmp_path / "data",
            "--limit-mb",
            "200",
            "--steps",
            "20",
            "--prove-limit",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert "memory-mapped: True" in done.stdout and "the cap holds" in done.stdout
    assert "converting organamnist_64.npz once" in done.stderr  # the conversion ran under the cap too
