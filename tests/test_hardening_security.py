"""Hardening, issue 25 (security share): no code run from a data folder (CIFAR-10 pickles and the other load
paths), no converted MedMNIST copy left behind by a refused file, no traceback for `--overwrite` through a
symlinked run directory, and a quiet `interrupted` (exit 130) for Ctrl-C during a command's start."""

from __future__ import annotations

import builtins
import io
import os
import pickle
import re
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, make_images, one_error_line, run_main

from keras_digits.data import load_dataset
from keras_digits.errors import KerasDigitsError

CIFAR_BATCHES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


def cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run(
        [sys.executable, "-m", *args], capture_output=True, text=True, cwd=REPO, env=env, timeout=timeout
    )


# ---------------------------------------------------------------------------- 1. CIFAR-10 pickles run nothing
class SystemPayload:
    """Unpickling it runs a shell command (what a planted batch file would do)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class ExecPayload:
    """Unpickling it runs Python code through builtins.exec."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return builtins.exec, (f"open({str(self.marker)!r}, 'w').write('ran')",)


def cifar_batch(n: int, seed: int, protocol: int = pickle.DEFAULT_PROTOCOL) -> bytes:
    """A batch in the official layout: bytes keys, a uint8 (N, 3072) array, a list of int labels."""
    x, y = make_images(n, (32, 32, 3), 10, seed)
    batch = {
        b"batch_label": b"training batch 1 of 5",
        b"labels": y.tolist(),
        b"data": x.transpose(0, 3, 1, 2).reshape(n, -1),
        b"filenames": [b"img_%d.png" % i for i in range(n)],
    }
    return pickle.dumps(batch, protocol=protocol)


def write_cifar(folder: Path, blobs: dict[str, bytes], layout: str) -> None:
    """The batches as cifar-10-python.tar.gz or as an extracted cifar-10-batches-py/ folder."""
    folder.mkdir(parents=True, exist_ok=True)
    if layout == "tar":
        with tarfile.open(folder / "cifar-10-python.tar.gz", "w:gz") as tar:
            for name, blob in blobs.items():
                info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
                info.size = len(blob)
                tar.addfile(info, io.BytesIO(blob))
    else:
        (folder / "cifar-10-batches-py").mkdir()
        for name, blob in blobs.items():
            (folder / "cifar-10-batches-py" / name).write_bytes(blob)


def planted(marker: Path, payload: type, where: str) -> bytes:
    """A batch whose unpickling would run code: the whole batch, or only its labels inside a genuine dict."""
    if where == "batch":
        return pickle.dumps(payload(marker))
    x, _ = make_images(4, (32, 32, 3), 10, 0)
    return pickle.dumps({b"data": x.transpose(0, 3, 1, 2).reshape(4, -1), b"labels": payload(marker)})


@pytest.mark.parametrize("layout", ["tar", "dir"])
@pytest.mark.parametrize("payload", [SystemPayload, ExecPayload])
@pytest.mark.parametrize("where", ["batch", "labels"])
def test_a_planted_cifar_batch_never_runs(tmp_path, layout, payload, where):
    marker = tmp_path / "MARKER"
    blobs = {name: cifar_batch(10, i) for i, name in enumerate(CIFAR_BATCHES)}
    blobs["data_batch_3"] = planted(marker, payload, where)
    write_cifar(tmp_path / "data", blobs, layout)
    with pytest.raises(KerasDigitsError, match=r"data_batch_3 is not a CIFAR-10 batch: .*refused") as exc:
        load_dataset("cifar10", tmp_path / "data")
    assert "\n" not in str(exc.value)
    assert not marker.exists()


@pytest.mark.parametrize("layout", ["tar", "dir"])
def test_a_planted_cifar_batch_through_the_train_command(tmp_path, layout):
    marker = tmp_path / "MARKER"
    blobs = {name: cifar_batch(10, i) for i, name in enumerate(CIFAR_BATCHES)}
    blobs["test_batch"] = planted(marker, SystemPayload, "batch")
    write_cifar(tmp_path / "data", blobs, layout)
    run = tmp_path / "run"
    proc = cli(
        "keras_digits.train",
        "--dataset",
        "cifar10",
        "--data-dir",
        str(tmp_path / "data"),
        "--arch",
        "dense",
        "--epochs",
        "1",
        "--verbose",
        "0",
        "--run-dir",
        str(run),
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    line = one_error_line(proc.stderr)
    assert "test_batch is not a CIFAR-10 batch" in line and "posix.system" in line
    assert not marker.exists() and not run.exists()


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_genuine_cifar_batches_still_load(tmp_path, protocol):
    blobs = {name: cifar_batch(10, i, protocol) for i, name in enumerate(CIFAR_BATCHES)}
    write_cifar(tmp_path, blobs, "dir")
    b = load_dataset("cifar10", tmp_path)
    assert b.input_shape == (32, 32, 3) and len(b.test[1]) == 10 and len(b.train[1]) + len(b.val[1]) == 50
    x, y = make_images(10, (32, 32, 3), 10, 5)  # the test batch, pixel for pixel
    assert np.array_equal(b.test[0], x) and np.array_equal(b.test[1], y)


def test_the_cifar_unpickler_allows_only_numpy_array_globals():
    from keras_digits.data.cifar import RefusedGlobal, load_batch_bytes

    arr = np.arange(6, dtype=np.uint8).reshape(2, 3)
    assert np.array_equal(load_batch_bytes(pickle.dumps({b"a": arr}, protocol=2))[b"a"], arr)
    assert load_batch_bytes(pickle.dumps({b"": [b"", b"x"]}, protocol=2)) == {b"": [b"", b"x"]}
    numpy1 = pickle.dumps(arr, protocol=2).replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"numpy.core.multiarray" in numpy1  # as the official batches (numpy < 2) spell it
    assert np.array_equal(load_batch_bytes(numpy1), arr)
    for obj in (np.float64(1.0), complex(1, 2), Path("x"), np.random.default_rng(0)):  # harmless, never in a batch
        with pytest.raises(RefusedGlobal):
            load_batch_bytes(pickle.dumps(obj))
    crafted = b"\x80\x02c_codecs\nencode\nq\x00X\x01\x00\x00\x00aX\x06\x00\x00\x00rot_13\x86R."
    with pytest.raises(RefusedGlobal):  # _codecs.encode only as the latin1 text pickle writes for bytes
        load_batch_bytes(crafted)


# ---------------------------------------------------------------------------- 1. the other load paths
UNSAFE = [
    (r"allow_pickle\s*=\s*True", "np.load with pickles"),
    (r"safe_mode\s*=\s*False", "Keras unsafe deserialisation"),
    (r"enable_unsafe_deserialization", "Keras unsafe deserialisation"),
    (r"\bpickle\.loads?\(|\bUnpickler\(f|cloudpickle|\bdill\b|joblib\.load|torch\.load", "an unrestricted unpickler"),
    (r"\byaml\.load\(|\byaml\.unsafe_load", "YAML objects"),
    (r"(?<![.\w])(eval|exec)\(", "code from text"),  # the builtins, not a method of that name
]


def test_no_load_path_enables_unsafe_deserialisation():
    """A guard over the package: every np.load says allow_pickle=False; nothing unpickles unrestricted, loads a
    Keras model unsafely, or evaluates text."""
    found = []
    for path in sorted((REPO / "keras_digits").rglob("*.py")):
        text = path.read_text()
        for pattern, what in UNSAFE:
            found += [f"{path.relative_to(REPO)}: {what}: {m.group(0)}" for m in re.finditer(pattern, text)]
        for m in re.finditer(r"np\.load\(", text):
            depth, end = 0, m.end() - 1
            for end in range(m.end() - 1, len(text)):  # to the call's closing parenthesis
                depth += {"(": 1, ")": -1}.get(text[end], 0)
                if depth == 0:
                    break
            call = text[m.start() : end + 1]
            if "allow_pickle=False" not in call:
                found.append(f"{path.relative_to(REPO)}: np.load without allow_pickle=False: {call[:80]}")
    assert not found, "\n".join(found)


def test_a_keras_model_with_a_lambda_layer_is_refused_and_never_runs(tmp_path):
    """evaluate/explain/export load best.keras with Keras' safe mode (the default): a Lambda layer's pickled
    bytecode is refused, not run."""
    import keras

    from keras_digits.evaluation.runs import load_run
    from keras_digits.utils.io import write_json

    marker = tmp_path / "MARKER"
    side_effect = keras.layers.Lambda(lambda x, m=str(marker): (open(m, "w").write("ran"), x)[1])
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(side_effect(inputs)))
    run = tmp_path / "run"
    run.mkdir()
    model.save(run / "best.keras")
    marker.unlink(missing_ok=True)  # saving traced the function
    write_json(run / "config.json", {"arch": "dense", "dataset": "digits"})
    write_json(run / "metrics.json", {"test": {"accuracy": 1.0}})
    with pytest.raises(KerasDigitsError, match="cannot load .*best.keras: ValueError: .*arbitrary code execution"):
        load_run(run)
    assert not marker.exists()


def test_a_svhn_mat_with_non_numeric_labels_is_one_error(tmp_path):
    import scipy.io

    x = np.zeros((32, 32, 3, 4), np.uint8)
    for name in ("train_32x32.mat", "test_32x32.mat"):
        scipy.io.savemat(tmp_path / name, {"X": x, "y": np.array([["a"], ["b"], ["c"], ["d"]])})
    with pytest.raises(KerasDigitsError, match="y must hold whole numbers"):
        load_dataset("svhn", tmp_path)
    cells = np.empty((4, 1), object)
    for i in range(4):
        cells[i, 0] = np.array([[1, 2]])
    for name in ("train_32x32.mat", "test_32x32.mat"):
        scipy.io.savemat(tmp_path / name, {"X": x, "y": cells})
    with pytest.raises(KerasDigitsError, match="y must hold whole numbers"):
        load_dataset("svhn", tmp_path)


# ---------------------------------------------------------------------------- 7. MedMNIST: no copy left behind
def write_medmnist_64(folder: Path, side: int = 64, labels=None) -> Path:
    """dermamnist_64.npz (RGB, 7 classes) with `side` px images; `labels` replaces every split's labels."""
    arrays = {}
    for i, split in enumerate(("train", "val", "test")):
        x, y = make_images(14, (side, side, 3), 7, seed=30 + i)
        arrays[f"{split}_images"] = x
        arrays[f"{split}_labels"] = y.reshape(-1, 1) if labels is None else labels
    folder.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(folder / "dermamnist_64.npz", **arrays)
    return folder / "dermamnist_64.npz"


def cache_dirs(cache: Path) -> list[Path]:
    """Every folder (converted copies, finished or half-written) under the npz cache."""
    return sorted(p for p in (cache / "npz").glob("*") if p.is_dir()) if (cache / "npz").is_dir() else []


def test_a_medmnist_file_of_the_wrong_size_is_refused_before_converting(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KERAS_DIGITS_CACHE", str(tmp_path / "cache"))
    write_medmnist_64(tmp_path / "data", side=28)
    with pytest.raises(KerasDigitsError, match="holds 28x28 images, expected 64x64"):
        load_dataset("dermamnist", tmp_path / "data", size=64)
    assert "converting" not in capsys.readouterr().err
    assert cache_dirs(tmp_path / "cache") == []


@pytest.mark.parametrize(
    "labels, message",
    [
        (np.full((14, 1), 99, np.uint8), r"labels must lie in \[0, 6\]"),
        (np.full((14, 1), 1.5), "labels must be integers"),
    ],
)
def test_a_medmnist_file_refused_after_converting_leaves_no_copy(tmp_path, monkeypatch, capsys, labels, message):
    monkeypatch.setenv("KERAS_DIGITS_CACHE", str(tmp_path / "cache"))
    write_medmnist_64(tmp_path / "data", labels=labels)
    with pytest.raises(KerasDigitsError, match=message):
        load_dataset("dermamnist", tmp_path / "data", size=64)
    assert "converting dermamnist_64.npz once" in capsys.readouterr().err
    assert cache_dirs(tmp_path / "cache") == []


def test_a_medmnist_object_array_is_refused_unread_and_uncached(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_DIGITS_CACHE", str(tmp_path / "cache"))
    marker = tmp_path / "MARKER"
    labels = np.empty((14, 1), object)
    labels[:, 0] = [SystemPayload(marker)] * 14
    path = write_medmnist_64(tmp_path / "data")
    with np.load(path) as d:
        arrays = dict(d)
    arrays["val_labels"] = labels
    np.savez_compressed(path, **arrays)
    with pytest.raises(KerasDigitsError, match="'val_labels' holds Python objects"):
        load_dataset("dermamnist", tmp_path / "data", size=64)
    assert not marker.exists() and cache_dirs(tmp_path / "cache") == []


def test_a_valid_medmnist_64_file_keeps_its_converted_copy(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KERAS_DIGITS_CACHE", str(tmp_path / "cache"))
    write_medmnist_64(tmp_path / "data")
    b = load_dataset("dermamnist", tmp_path / "data", size=64)
    assert b.input_shape == (64, 64, 3) and isinstance(b.train[0], np.memmap)
    assert len(cache_dirs(tmp_path / "cache")) == 1
    load_dataset("dermamnist", tmp_path / "data", size=64)
    assert capsys.readouterr().err.count("converting") == 1


# ---------------------------------------------------------------------------- 8. --overwrite through a symlink
def interrupted_run(folder: Path) -> Path:
    from keras_digits.config import TrainConfig
    from keras_digits.utils.io import write_json

    (folder / "backup").mkdir(parents=True)
    write_json(folder / "config.json", TrainConfig(verbose=0).to_dict())
    (folder / "history.csv").write_text("epoch,loss\n0,1.0\n")
    return folder


def test_overwrite_through_a_symlinked_run_dir_is_refused_and_deletes_nothing(tmp_path, capsys):
    from keras_digits.train import main as train_main
    from keras_digits.training.rundir import staging_dir

    target = interrupted_run(tmp_path / "real")
    link = tmp_path / "LINK"
    link.symlink_to(target, target_is_directory=True)
    code, _, err = run_main(
        train_main,
        [
            "--arch",
            "dense",
            "--dataset",
            "digits",
            "--max-train-samples",
            "100",
            "--epochs",
            "1",
            "--verbose",
            "0",
            "--run-dir",
            link,
            "--overwrite",
        ],
        capsys,
    )
    assert code == 2, err
    line = one_error_line(err)
    assert "is a symbolic link" in line and str(target) in line
    assert link.is_symlink() and (target / "backup").is_dir() and (target / "history.csv").is_file()

    (target / "metrics.json").write_text('{"test": {"accuracy": 0.5}}')  # an ended run behind the link: refused too
    with pytest.raises(KerasDigitsError, match="is a symbolic link"):
        staging_dir(link, overwrite=True)
    with pytest.raises(KerasDigitsError, match="already holds a finished run"):
        staging_dir(link, overwrite=False)
    (target / "metrics.json").unlink()
    assert staging_dir(link, overwrite=False) == link  # resuming through a link still works
    assert (target / "backup").is_dir()


def test_a_symlink_at_the_overwrite_staging_name_is_removed_not_followed(tmp_path):
    from keras_digits.training.rundir import staging_dir

    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text('{"test": {"accuracy": 0.5}}')
    elsewhere = interrupted_run(tmp_path / "elsewhere")
    (elsewhere / "metrics.json").write_text('{"test": {"accuracy": 0.9}}')
    (tmp_path / "run.overwrite").symlink_to(elsewhere, target_is_directory=True)
    staged = staging_dir(run, overwrite=True)
    assert staged == tmp_path / "run.overwrite" and not staged.exists() and not staged.is_symlink()
    assert (elsewhere / "metrics.json").is_file() and (elsewhere / "backup").is_dir()
    assert (run / "metrics.json").is_file()


# ---------------------------------------------------------------------------- 8. Ctrl-C during a command's start
def interrupt_when(command: list[str], after_module: str, delay: float) -> tuple[int, str]:
    """Start `python -X importtime -m COMMAND`, send SIGINT `delay` s after `after_module` finished importing
    (importtime reports each import on stderr as it ends: a sync point, not a guess at how long start-up takes);
    (exit code, stderr without importtime's lines)."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-X", "importtime", "-m", *command],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines = []
    try:
        for line in proc.stderr:
            lines.append(line)
            if line.startswith("import time:") and line.rsplit("|", 1)[-1].strip() == after_module:
                time.sleep(delay)
                proc.send_signal(signal.SIGINT)
                break
        else:
            pytest.fail(f"{after_module} was never imported:\n{''.join(lines)[-3000:]}")
        lines += proc.stderr.readlines()
        code = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return code, "".join(line for line in lines if not line.startswith("import time:"))


@pytest.mark.parametrize(
    "command, after_module, delay",
    [
        (["keras_digits.export", "--run", "nowhere"], "keras_digits", 0.0),  # just after the package (handler set)
        (["keras_digits.export", "--run", "nowhere"], "numpy", 0.0),
        # run_cli importing TensorFlow
        (["keras_digits.export", "--run", "nowhere"], "keras_digits.serving.export_run", 0.3),
        (["keras_digits.train", "--dataset", "digits"], "keras_digits.training.flags", 0.0),
        (["keras_digits.explain", "--help"], "keras_digits", 0.0),  # a package's __main__
    ],
)
def test_ctrl_c_during_a_commands_start_prints_interrupted(command, after_module, delay):
    code, err = interrupt_when(command, after_module, delay)
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-3000:]
    assert err.strip().splitlines() == ["interrupted"], err[-3000:]
    assert code == 130


def test_ctrl_c_in_a_commands_main_still_runs_its_cleanups(tmp_path, capsys):
    """In-process (no `python -m`): run_cli leaves SIGINT alone and reports a KeyboardInterrupt raised in main."""
    from keras_digits.utils.cli import run_cli

    before = signal.getsignal(signal.SIGINT)
    cleaned = []

    def main(argv):
        try:
            raise KeyboardInterrupt
        finally:
            cleaned.append(True)

    assert run_cli(main, []) == 130
    assert cleaned == [True] and capsys.readouterr().err.strip() == "interrupted"
    assert signal.getsignal(signal.SIGINT) is before
