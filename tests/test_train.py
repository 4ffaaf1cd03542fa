"""End to end: the train and evaluate CLIs, the run directory, resume, configs and bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from keras_digits.config import TrainConfig
from keras_digits.errors import KerasDigitsError
from keras_digits.models import build_model, list_models
from keras_digits.train import main as train_main
from keras_digits.training.callbacks import schedule_lr
from keras_digits.training.rundir import default_run_dir
from keras_digits.utils.cli import run_cli

RUN_FILES = {
    "config.json",
    "dataset.json",
    "history.csv",
    "best.keras",
    "metrics.json",
    "confusion_matrix.png",
    "curves.png",
    "logs",
}


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, cwd=cwd, timeout=300)


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory) -> Path:
    """One short run on the embedded digits set, shared by several tests."""
    run = tmp_path_factory.mktemp("runs") / "digits"
    code = train_main(
        [
            "--arch",
            "simple_cnn_v1",
            "--epochs",
            "4",
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
    assert code == 0
    return run


def test_run_directory_contents(digits_run):
    assert RUN_FILES <= {p.name for p in digits_run.iterdir()}
    metrics = json.loads((digits_run / "metrics.json").read_text())
    assert set(metrics) >= {"val", "test"}
    test = metrics["test"]
    assert test["accuracy"] > 0.8  # the digits set is easy: a real signal, not chance (0.1)
    assert {"loss", "precision", "recall", "f1", "auc", "per_class", "confusion_matrix"} <= set(test)
    assert len(test["per_class"]) == 10 and test["per_class"][3]["label"] == "3"
    assert np.asarray(test["confusion_matrix"]).sum() == test["n"] == 359
    cfg = json.loads((digits_run / "config.json").read_text())
    assert cfg["arch"] == "simple_cnn_v1" and cfg["batch_size"] == 64 and cfg["epochs"] == 4
    assert len((digits_run / "history.csv").read_text().strip().splitlines()) >= 2
    assert not (digits_run / "backup").exists()


def test_evaluate_rescores_same_numbers(digits_run):
    from keras_digits.evaluate import main as eval_main

    before = json.loads((digits_run / "metrics.json").read_text())["test"]["accuracy"]
    assert eval_main(["--run", str(digits_run), "--split", "test", "--split", "val"]) == 0
    after = json.loads((digits_run / "metrics.json").read_text())
    assert after["test"]["accuracy"] == pytest.approx(before, abs=1e-9)
    assert "val" in after


def test_finished_run_is_not_overwritten(digits_run):
    with pytest.raises(KerasDigitsError, match="already holds a finished run"):
        train_main(["--arch", "simple_cnn_v1", "--epochs", "1", "--run-dir", str(digits_run), "--verbose", "0"])


def test_default_run_dir_skips_finished(tmp_path):
    cfg = TrainConfig(arch="dense", dataset="digits", seed=7)
    first = default_run_dir(cfg, tmp_path)
    assert first.name == "digits-dense-s7"
    first.mkdir()
    assert default_run_dir(cfg, tmp_path) == first  # unfinished: resume there
    (first / "metrics.json").write_text("{}")
    assert default_run_dir(cfg, tmp_path).name == "digits-dense-s7-2"


def test_config_file_and_flags(tmp_path, mnist_like_dir):
    from keras_digits.train import build_parser
    from keras_digits.training.flags import config_from_args

    path = tmp_path / "c.json"
    path.write_text(json.dumps({"arch": "dense", "epochs": 3, "lr": 0.01, "data_dir": str(mnist_like_dir)}))
    cfg = config_from_args(build_parser().parse_args(["--config", str(path), "--epochs", "7"]))
    assert (cfg.arch, cfg.epochs, cfg.lr) == ("dense", 7, 0.01)
    path.write_text(json.dumps({"arch": "dense", "colour": "red"}))
    with pytest.raises(KerasDigitsError, match="colour"):
        config_from_args(build_parser().parse_args(["--config", str(path)]))


def test_resume_after_interruption(tmp_path, mnist_like_dir):
    """A run killed mid-training resumes from its backup when the same command runs again."""
    import keras

    run = tmp_path / "run"
    args = [
        "--arch",
        "dense",
        "--dataset",
        "mnist",
        "--data-dir",
        str(mnist_like_dir),
        "--epochs",
        "4",
        "--run-dir",
        str(run),
        "--verbose",
        "0",
        "--no-early-stopping",
    ]

    class Crash(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise RuntimeError("simulated crash")

    import keras_digits.training.run as train_mod

    original = train_mod.make_callbacks
    train_mod.make_callbacks = lambda *a, **k: original(*a, **k) + [Crash()]
    try:
        with pytest.raises(RuntimeError, match="simulated crash"):
            train_main(args)
    finally:
        train_mod.make_callbacks = original
    assert (run / "backup").is_dir() and not (run / "metrics.json").exists()
    assert train_main(args) == 0
    epochs = [int(line.split(",")[0]) for line in (run / "history.csv").read_text().splitlines()[1:]]
    assert epochs[-1] == 3 and len(epochs) == 4  # resumed at epoch 2, did not start over
    assert (run / "metrics.json").exists()


def test_overwrite_keeps_the_old_run_until_the_new_one_finishes(tmp_path, mnist_like_dir):
    """--overwrite trains beside the finished run and swaps it in at the end: a rerun that crashes
    leaves the old run whole; one that finishes replaces it (no staging folder left behind)."""
    import keras

    import keras_digits.training.run as train_mod

    run = tmp_path / "run"
    base = [
        "--arch",
        "dense",
        "--dataset",
        "mnist",
        "--data-dir",
        str(mnist_like_dir),
        "--run-dir",
        str(run),
        "--verbose",
        "0",
        "--no-early-stopping",
    ]
    assert train_main([*base, "--epochs", "1"]) == 0
    old_metrics = (run / "metrics.json").read_text()

    class Crash(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            raise RuntimeError("simulated crash")

    original = train_mod.make_callbacks
    train_mod.make_callbacks = lambda *a, **k: original(*a, **k) + [Crash()]
    try:
        with pytest.raises(RuntimeError, match="simulated crash"):
            train_main([*base, "--epochs", "2", "--overwrite"])
    finally:
        train_mod.make_callbacks = original
    assert (run / "metrics.json").read_text() == old_metrics
    assert json.loads((run / "config.json").read_text())["epochs"] == 1
    assert train_main([*base, "--epochs", "2", "--overwrite"]) == 0
    assert json.loads((run / "config.json").read_text())["epochs"] == 2
    assert len((run / "history.csv").read_text().strip().splitlines()) == 3
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "mnist.npz") == ["run"]


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--arch", "resnet9000"], "unknown arch 'resnet9000'"),
        (["--dataset", "imagenet"], "unknown dataset 'imagenet'"),
        (["--optimizer", "adamax"], "invalid choice"),
        (["--epochs", "0"], "must be positive"),
        (["--batch-size", "-4"], "must be positive"),
        (["--lr", "0"], "must be positive"),
        (["--dataset", "mnist", "--data-dir", "{empty}"], "could not find mnist.npz"),
        (["--dataset", "mnist", "--data-dir", "{corrupt}"], "not a readable npz"),
        (["--config", "{missing}"], "config file not found"),
    ],
)
def test_bad_input_is_one_line_exit_2(tmp_path, capsys, args, needle):
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "mnist.npz").write_bytes(b"PK\x03\x04 not really a zip")
    (tmp_path / "empty").mkdir()
    args = [a.format(empty=tmp_path / "empty", corrupt=corrupt, missing=tmp_path / "no.json") for a in args]
    run = tmp_path / "run"
    argv = [*args, "--run-dir", str(run), "--epochs" if "--epochs" not in args else "--seed", "1"]
    with pytest.raises(SystemExit) if needle == "invalid choice" or "must be positive" in needle else _no_exit():
        code = run_cli(train_main, argv)
        assert code == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err
    assert len([l for l in err.splitlines() if l.startswith("error:")]) <= 1
    assert not list(run.glob("*.keras")) if run.exists() else True


class _no_exit:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_bad_input_from_a_real_process_has_no_traceback(tmp_path):
    proc = cli("keras_digits.train", "--arch", "resnet9000", "--run-dir", str(tmp_path / "run"))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["error: unknown arch 'resnet9000'; known: " + ", ".join(list_models())]


def test_help_lists_every_arch_and_dataset():
    proc = cli("keras_digits.train", "--help")
    assert proc.returncode == 0
    flat = " ".join(proc.stdout.split())
    for name in list_models():
        assert name in flat
    for flag in (
        "--data-dir",
        "--epochs",
        "--batch-size",
        "--lr",
        "--optimizer",
        "--patience",
        "--seed",
        "--val-split",
        "--image-size",
        "--run-dir",
        "--config",
    ):
        assert flag in flat


def test_report_models_parameter_counts():
    assert build_model("simple_cnn_v1", (28, 28, 1), 10).count_params() == 50_186
    m = build_model("simple_cnn", (28, 28, 1), 10)
    trainable = sum(int(np.prod(w.shape)) for w in m.trainable_weights)
    assert trainable == 391_370  # the report counted trainable parameters (PyTorch style)
    m = build_model("simple_cnn", (28, 28, 1), 10, batch_norm=False, dropout=False)
    assert not any("bn" in l.name or "drop" in l.name for l in m.layers)


def test_model_takes_raw_pixels():
    m = build_model("keras_cnn", (28, 28, 1), 10)
    x = np.random.default_rng(0).integers(0, 256, size=(3, 28, 28, 1)).astype(np.uint8)
    out = np.asarray(m(x.astype("float32")))
    assert out.shape == (3, 10) and np.allclose(out.sum(axis=1), 1, atol=1e-5)
    assert any(l.name == "rescale" for l in m.layers)


def test_unknown_model_kwarg_is_clear():
    with pytest.raises(KerasDigitsError, match="does not take option"):
        build_model("dense", (28, 28, 1), 10, batchnorm=True)


@pytest.mark.parametrize("epoch,expected", [(0, 1.0), (4, 1.0), (5, 0.1), (7, 0.1), (8, 0.01), (9, 0.01)])
def test_step_schedule(epoch, expected):
    cfg = TrainConfig(schedule="step", epochs=10, lr=1.0)
    assert schedule_lr(cfg, epoch) == pytest.approx(expected)


def test_pathmnist_trains_with_auc(tmp_path, pathmnist_dir):
    run = tmp_path / "run"
    assert (
        train_main(
            [
                "--arch",
                "simple_cnn_v1",
                "--dataset",
                "pathmnist",
                "--data-dir",
                str(pathmnist_dir),
                "--epochs",
                "2",
                "--run-dir",
                str(run),
                "--verbose",
                "0",
            ]
        )
        == 0
    )
    metrics = json.loads((run / "metrics.json").read_text())
    for split in ("val", "test"):
        assert metrics[split]["n"] == 45
        assert 0.0 <= metrics[split]["auc"] <= 1.0
        assert metrics[split]["per_class"][0]["label"] == "adipose"


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--momentum", "1.5", "--optimizer", "sgd"], "--momentum must be in [0, 1]"),
        (
            ["--arch", "simple_cnn", "--model-kwargs", '{"filters": 32}'],
            "'filters' must be a non-empty list of whole numbers",
        ),
        (["--arch", "simple_cnn", "--model-kwargs", '{"conv_dropout": 1.5}'], "cannot build"),
    ],
)
def test_bad_option_values_are_clear(tmp_path, capsys, args, needle):
    assert run_cli(train_main, [*args, "--run-dir", str(tmp_path / "r"), "--epochs", "1"]) == 2
    assert needle in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_corrupt_run_config_is_clear(digits_run, tmp_path, capsys):
    import shutil

    from keras_digits.evaluate import main as eval_main

    broken = tmp_path / "broken"
    shutil.copytree(digits_run, broken)
    (broken / "config.json").write_text('{"arch": "simple')
    assert run_cli(eval_main, ["--run", str(broken)]) == 2
    assert "not valid JSON" in capsys.readouterr().err


def _digits_args(run: Path, epochs: int = 3) -> list[str]:
    return [
        "--arch",
        "simple_cnn",
        "--dataset",
        "digits",
        "--seed",
        "1",
        "--epochs",
        str(epochs),
        "--batch-size",
        "64",
        "--run-dir",
        str(run),
        "--verbose",
        "0",
        "--no-early-stopping",
        "--deterministic",
    ]


def test_resumed_run_continues_the_interrupted_one(tmp_path):
    """A run interrupted mid-epoch and resumed has the uninterrupted run's history, row for row: the
    resumed epochs get their own data order and Dropout masks, not a replay of epoch 0's (with which
    the restored weights scored ~100% training accuracy and then fell back)."""
    import keras

    import keras_digits.training.run as train_mod

    assert train_main(_digits_args(tmp_path / "whole")) == 0

    class Crash(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_train_batch_end(self, batch, logs=None):
            if self.epoch == 1 and batch == 5:
                raise RuntimeError("simulated crash")

    run = tmp_path / "resumed"
    original = train_mod.make_callbacks
    train_mod.make_callbacks = lambda *a, **k: original(*a, **k) + [Crash()]
    try:
        with pytest.raises(RuntimeError, match="simulated crash"):
            train_main(_digits_args(run))
    finally:
        train_mod.make_callbacks = original
    assert train_main(_digits_args(run)) == 0

    def rows(path: Path) -> list[dict]:  # everything but the wall times
        import csv

        with open(path, newline="") as fh:
            return [{k: v for k, v in row.items() if not k.endswith("_seconds")} for row in csv.DictReader(fh)]

    assert rows(run / "history.csv") == rows(tmp_path / "whole" / "history.csv")


def test_run_killed_as_training_ends_is_scored_not_retrained(tmp_path, monkeypatch):
    """Killed inside fit's end (BackupAndRestore has deleted its backup): the rerun only scores."""
    import keras

    import keras_digits.training.run as train_mod

    class Crash(keras.callbacks.Callback):
        def on_train_end(self, logs=None):
            raise RuntimeError("killed as training ended")

    run = tmp_path / "run"
    original = train_mod.make_callbacks
    with monkeypatch.context() as m:
        m.setattr(train_mod, "make_callbacks", lambda *a, **k: original(*a, **k) + [Crash()])
        with pytest.raises(RuntimeError, match="as training ended"):
            train_main(_digits_args(run, epochs=2))
    assert not (run / "backup").exists() and (run / "trained.json").exists()
    history = (run / "history.csv").read_text()

    def no_fit(*a, **k):
        raise AssertionError("retrained a run whose training had ended")

    monkeypatch.setattr(keras.Model, "fit", no_fit)
    assert train_main(_digits_args(run, epochs=2)) == 0
    assert (run / "history.csv").read_text() == history
    assert json.loads((run / "metrics.json").read_text())["epochs_run"] == 2
