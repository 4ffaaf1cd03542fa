"""Reliability: diverged runs, one process per output folder, scoring on the data a model was trained
on, bad output paths, type checks and untidy folder trees (issue 10's reproductions)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, make_images

from keras_digits.errors import KerasDigitsError
from keras_digits.utils.cli import run_cli

TINY = ["--arch", "dense", "--dataset", "digits", "--max-train-samples", "200", "--epochs", "1", "--verbose", "0"]


def cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run(
        [sys.executable, "-m", *args], capture_output=True, text=True, cwd=REPO, env=env, timeout=timeout
    )


def one_error_line(err: str, needle: str) -> None:
    assert "Traceback" not in err, err[-2000:]
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and needle in lines[0], err[-2000:]


def train(argv, capsys=None) -> int:
    from keras_digits.train import main

    return run_cli(main, argv)


# ---------------------------------------------------------------------------- 1. divergence
def test_a_diverging_run_is_recorded_refused_everywhere_and_not_retrained(tmp_path, capsys):
    run = tmp_path / "R"
    argv = [*TINY, "--optimizer", "sgd", "--lr", "1e6", "--epochs", "2", "--run-dir", str(run)]
    assert train(argv) == 3
    one_error_line(capsys.readouterr().err, "training diverged at epoch 1")
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "diverged" and metrics["diverged"]["epoch"] == 1 and metrics["epochs_run"] >= 1
    assert not (run / "best.keras").exists() and not (run / "backup").exists()
    assert (run / "config.json").is_file() and (run / "history.csv").is_file()
    assert not list(tmp_path.glob(".*.lock"))
    history = (run / "history.csv").read_text()

    assert train(argv) == 3  # the same command again: reported, not retrained
    one_error_line(capsys.readouterr().err, "holds a run that diverged at epoch 1")
    assert (run / "history.csv").read_text() == history

    from keras_digits.evaluate import main as evaluate_main
    from keras_digits.export import main as export_main

    assert run_cli(export_main, ["--run", str(run), "--out", str(tmp_path / "sm")]) == 2
    one_error_line(capsys.readouterr().err, "diverged at epoch 1")
    assert not (tmp_path / "sm").exists()
    assert run_cli(evaluate_main, ["--run", str(run)]) == 2
    one_error_line(capsys.readouterr().err, "diverged")


def test_default_run_dir_returns_the_diverged_run_of_the_same_config(tmp_path):
    from keras_digits.config import TrainConfig
    from keras_digits.training.rundir import default_run_dir
    from keras_digits.utils.io import write_json

    cfg = TrainConfig(verbose=0)
    first = default_run_dir(cfg, tmp_path)
    first.mkdir(parents=True)
    write_json(first / "config.json", cfg.to_dict())
    write_json(first / "metrics.json", {"status": "diverged", "diverged": {"epoch": 1}})
    assert default_run_dir(cfg, tmp_path) == first
    assert default_run_dir(cfg.replace(lr=1e-4), tmp_path) != first  # another config goes on to -2


def test_infinite_learning_rate_is_refused(capsys):
    with pytest.raises(SystemExit):
        train([*TINY, "--lr", "inf"])
    assert "must be positive and finite" in capsys.readouterr().err


def test_metrics_survive_nan_outputs():
    from keras_digits.evaluation.metrics import classification_metrics

    probs = np.full((6, 3), 1 / 3)
    probs[1] = np.nan
    probs[4, 0] = np.inf
    m = classification_metrics(np.array([0, 1, 2, 0, 1, 2]), probs, ["a", "b", "c"])
    assert m["nonfinite_outputs"] == 2 and m["auc"] is None and np.isfinite(m["loss"])
    json.dumps(m, allow_nan=False)


def test_checkpoint_and_export_refuse_nonfinite_weights(tmp_path):
    import keras

    from keras_digits.models import build_model
    from keras_digits.serving.export import export_model
    from keras_digits.training.callbacks import AtomicCheckpoint

    model = build_model("dense", (8, 8, 1), 3)
    weights = model.get_weights()
    weights[0][0, 0] = np.nan
    model.set_weights(weights)
    ckpt = AtomicCheckpoint(tmp_path / "best.keras")
    ckpt.set_model(model)
    ckpt.on_epoch_end(0, {"val_accuracy": 0.5, "loss": 1.0})
    assert not (tmp_path / "best.keras").exists()
    with pytest.raises(KerasDigitsError, match="non-finite"):
        export_model(model, tmp_path / "sm" / "1", ["a", "b", "c"])
    assert not (tmp_path / "sm" / "1").exists()
    del keras


def test_predict_refuses_a_savedmodel_with_nonfinite_weights(tmp_path, monkeypatch, capsys):
    from PIL import Image

    import keras_digits.serving.export as export_mod
    from keras_digits.models import build_model
    from keras_digits.predict import main as predict_main

    model = build_model("dense", (8, 8, 1), 3)
    weights = model.get_weights()
    weights[0][:] = np.nan
    model.set_weights(weights)
    monkeypatch.setattr(export_mod, "nonfinite_variables", lambda variables: [])  # a model made elsewhere
    export_mod.export_model(model, tmp_path / "sm" / "1", ["a", "b", "c"])
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "x.png")
    out = tmp_path / "p.csv"
    assert run_cli(predict_main, [str(tmp_path / "x.png"), "--model", str(tmp_path / "sm"), "--out", str(out)]) == 2
    one_error_line(capsys.readouterr().err, "non-finite")
    assert not out.exists()


def test_a_sweep_with_a_diverging_setting_finishes_the_rest(tmp_path):
    from keras_digits.sweep import main as sweep_main

    out = tmp_path / "sweep"
    code = run_cli(sweep_main, [*TINY, "--optimizer", "sgd", "--vary", "lr=0.01,1e6", "--out", str(out)])
    assert code == 0
    table = (out / "sweep.md").read_text()
    assert "diverged: 1 of 1" in table
    rows = (out / "sweep.csv").read_text().splitlines()
    assert any(",finished," in r for r in rows) and any(",diverged," in r for r in rows)


# ---------------------------------------------------------------------------- 2. one process per folder
class LockHolder:
    """Another process holding the locks of some folders (as a training in progress would)."""

    def __init__(self, *folders: Path):
        code = (
            "import sys, time\nfrom keras_digits.utils.lock import acquire\n"
            "for f in sys.argv[1:]:\n    acquire(f)\nprint('ready', flush=True)\ntime.sleep(300)\n"
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code, *map(str, folders)], stdout=subprocess.PIPE, text=True, cwd=REPO
        )
        assert self.proc.stdout.readline().strip() == "ready"

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.kill()


def test_lock_is_exclusive_and_freed_when_its_holder_dies(tmp_path):
    from keras_digits.utils.lock import acquire, lock_path, release

    target = tmp_path / "run"
    holder = LockHolder(target)
    try:
        with pytest.raises(KerasDigitsError, match=f"in use by pid {holder.proc.pid} on "):
            acquire(target, "run directory")
        with pytest.raises(KerasDigitsError, match="in use"):  # another spelling of the same folder
            acquire(tmp_path / "x" / ".." / "run")
    finally:
        holder.kill()  # SIGKILL: its lock file stays behind, its OS lock does not
    assert lock_path(target).exists()
    lock = acquire(target, "run directory")
    assert json.loads(lock.read_text())["pid"] == os.getpid()
    release(lock)
    assert not lock.exists()


def test_a_second_process_on_a_held_run_dir_gets_one_line_and_exit_2(tmp_path):
    run = tmp_path / "run"
    with LockHolder(run) as holder:
        proc = cli("keras_digits.train", *TINY, "--run-dir", str(run))
        assert proc.returncode == 2
        one_error_line(proc.stderr, f"run directory {run} is in use by pid {holder.proc.pid}")
        assert not (run / "metrics.json").exists()


def test_export_sweep_and_tune_targets_are_locked(tmp_path, capsys):
    from keras_digits.export import main as export_main
    from keras_digits.sweep import main as sweep_main
    from keras_digits.tune.cli import main as tune_main

    run = tmp_path / "run"
    assert train([*TINY, "--run-dir", str(run)]) == 0
    with LockHolder(tmp_path / "sweep", tmp_path / "tuning" / "proj", tmp_path / "sm" / "1"):
        assert run_cli(sweep_main, [*TINY, "--vary", "lr=0.01", "--out", str(tmp_path / "sweep")]) == 2
        one_error_line(capsys.readouterr().err, "sweep folder")
        assert (
            run_cli(
                tune_main,
                [
                    "--arch",
                    "dense",
                    "--max-trials",
                    "1",
                    "--max-epochs",
                    "1",
                    "--directory",
                    str(tmp_path / "tuning"),
                    "--project",
                    "proj",
                    "--verbose",
                    "0",
                ],
            )
            == 2
        )
        one_error_line(capsys.readouterr().err, "tuner project")
        assert run_cli(export_main, ["--run", str(run), "--out", str(tmp_path / "sm")]) == 2
        one_error_line(capsys.readouterr().err, "export folder")


def test_a_killed_exports_temp_folder_is_cleaned_on_the_next_export(tmp_path):
    from keras_digits.export import main as export_main

    run = tmp_path / "run"
    assert train([*TINY, "--run-dir", str(run)]) == 0
    (tmp_path / "sm" / ".1.abcd1234.tmp").mkdir(parents=True)  # what a killed export leaves
    assert run_cli(export_main, ["--run", str(run), "--out", str(tmp_path / "sm")]) == 0
    assert sorted(p.name for p in (tmp_path / "sm").iterdir()) == ["1"]


# ---------------------------------------------------------------------------- 3. the right data
def _tree(root: Path, labels: tuple[str, ...], seed: int, per_class: int = 12, channels: int = 1) -> Path:
    from PIL import Image

    x, y = make_images(per_class * len(labels), (16, 16, channels) if channels > 1 else (16, 16), len(labels), seed)
    for i, (img, label) in enumerate(zip(x, y)):
        folder = root / labels[int(label)]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(folder / f"{i}.png")
    return root


def _folder_run(tmp_path: Path, name: str, tree: Path, seed: int = 42) -> Path:
    run = tmp_path / name
    assert (
        train(
            [
                "--arch",
                "dense",
                "--dataset",
                "folder",
                "--data-dir",
                str(tree),
                "--image-size",
                "16",
                "--epochs",
                "1",
                "--verbose",
                "0",
                "--seed",
                str(seed),
                "--run-dir",
                str(run),
            ]
        )
        == 0
    )
    return run


def test_evaluate_refuses_other_labels_and_keeps_the_runs_own_metrics(tmp_path, capsys):
    from keras_digits.evaluate import main as evaluate_main

    run = _folder_run(tmp_path, "run", _tree(tmp_path / "t1", ("zero", "one"), seed=1))
    before = (run / "metrics.json").read_text()
    other = _tree(tmp_path / "t2", ("a", "b"), seed=2)
    assert run_cli(evaluate_main, ["--run", str(run), "--data-dir", str(other)]) == 2
    one_error_line(capsys.readouterr().err, "trained on labels ['one', 'zero']")
    three = _tree(tmp_path / "t3", ("zero", "one", "two"), seed=3)
    assert run_cli(evaluate_main, ["--run", str(run), "--data-dir", str(three)]) == 2
    one_error_line(capsys.readouterr().err, "the model has 2 classes")
    rgb = _tree(tmp_path / "t4", ("zero", "one"), seed=4, channels=3)
    assert run_cli(evaluate_main, ["--run", str(run), "--data-dir", str(rgb)]) == 2
    one_error_line(capsys.readouterr().err, "images of shape (16, 16, 1)")
    same_labels = _tree(tmp_path / "t5", ("zero", "one"), seed=5)
    assert run_cli(evaluate_main, ["--run", str(run), "--data-dir", str(same_labels)]) == 0
    assert "not the data this run was trained" in capsys.readouterr().err
    assert (run / "metrics.json").read_text() == before
    other = list(run.glob("metrics-folder-t5-*.json"))
    assert len(other) == 1 and json.loads(other[0].read_text())["test"]["n"] > 0
    assert run_cli(evaluate_main, ["--run", str(run)]) == 0  # its own data: metrics.json, same figures
    assert json.loads((run / "metrics.json").read_text())["test"] == json.loads(before)["test"]


def test_ensemble_members_must_share_their_data(tmp_path, capsys):
    from keras_digits.ensemble import main as ensemble_main

    a = _folder_run(tmp_path, "a", _tree(tmp_path / "t1", ("zero", "one"), seed=1))
    b = _folder_run(tmp_path, "b", _tree(tmp_path / "t2", ("zero", "one"), seed=2))
    c = _folder_run(tmp_path, "c", tmp_path / "t1", seed=7)
    assert run_cli(ensemble_main, ["--runs", str(a), str(b), "--out", str(tmp_path / "ens")]) == 2
    one_error_line(capsys.readouterr().err, f"member {b} was not tested on this test split")
    assert run_cli(ensemble_main, ["--runs", str(a), str(c), "--out", str(tmp_path / "ens")]) == 0
    (tmp_path / "file").write_text("x")
    assert run_cli(ensemble_main, ["--runs", str(a), str(c), "--out", str(tmp_path / "file")]) == 2
    one_error_line(capsys.readouterr().err, "is a file, not a folder")


# ---------------------------------------------------------------------------- 5. 16-bit images
def test_16_bit_and_float_images_are_scaled_not_clipped(tmp_path):
    from PIL import Image

    from keras_digits.data.folder import read_image

    rng = np.random.default_rng(0)
    wide = rng.integers(0, 65536, size=(20, 20), dtype=np.uint16)
    Image.fromarray(wide).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I;16")
    got = read_image(tmp_path / "g16.png", None)[..., 0].astype(int)
    assert np.abs(got - np.rint(wide.astype(float) * 255 / 65535)).max() <= 1
    assert (got == 255).mean() < 0.02  # not 99.6 % white
    Image.fromarray(rng.random((20, 20)).astype(np.float32)).save(tmp_path / "f.tif")
    got = read_image(tmp_path / "f.tif", None)
    assert got.dtype == np.uint8 and 100 < got.mean() < 155
    assert read_image(tmp_path / "g16.png", 10, "RGB").shape == (10, 10, 3)


# ---------------------------------------------------------------------------- 6. bad output paths
@pytest.mark.parametrize("case", ["under_a_file", "is_a_file", "no_write_permission"])
def test_train_refuses_bad_run_dirs_with_one_line(tmp_path, capsys, monkeypatch, case):
    (tmp_path / "FILE").write_text("x")
    run = {
        "under_a_file": tmp_path / "FILE" / "run",
        "is_a_file": tmp_path / "FILE",
        "no_write_permission": tmp_path / "ro" / "run",
    }[case]
    if case == "no_write_permission":
        (tmp_path / "ro").mkdir()
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, m, **k: False if Path(p) == tmp_path / "ro" else real(p, m, **k))
    assert train([*TINY, "--run-dir", str(run)]) == 2
    one_error_line(capsys.readouterr().err, "run directory")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted({"FILE", "ro"} & {p.name for p in tmp_path.iterdir()})


def test_an_os_error_on_a_path_is_one_line(tmp_path, capsys):
    try:
        os.makedirs("/sys/keras_digits_probe/x")
    except PermissionError:
        pass
    else:  # pragma: no cover - a machine where /sys is writable
        pytest.skip("/sys is writable here")
    assert train([*TINY, "--run-dir", "/sys/keras_digits_probe/run"]) == 2
    one_error_line(capsys.readouterr().err, "/sys/")


def test_out_paths_of_predict_and_submit_must_be_files(tmp_path, capsys):
    from keras_digits.predict import main as predict_main
    from keras_digits.submit import main as submit_main

    (tmp_path / "x.png").write_bytes(b"")
    assert run_cli(predict_main, [str(tmp_path / "x.png"), "--model", str(tmp_path), "--out", str(tmp_path)]) == 2
    one_error_line(capsys.readouterr().err, "is a folder")
    assert run_cli(submit_main, ["--model", str(tmp_path), "--images", str(tmp_path), "--out", str(tmp_path)]) == 2
    one_error_line(capsys.readouterr().err, "is a folder")


def test_an_image_size_that_cannot_fit_is_refused(tmp_path, capsys):
    assert train([*TINY, "--image-size", "100000", "--run-dir", str(tmp_path / "run")]) == 2
    one_error_line(capsys.readouterr().err, "--image-size 100000")
    assert not (tmp_path / "run").exists()


def test_tune_fixed_values_and_project_names_are_checked(tmp_path, capsys):
    from keras_digits.tune.cli import main as tune_main

    base = ["--arch", "dense", "--max-trials", "1", "--max-epochs", "1", "--directory", str(tmp_path / "t")]
    assert run_cli(tune_main, [*base, "--fixed", "lr=abc"]) == 2
    one_error_line(capsys.readouterr().err, "--fixed lr: must be a finite number, got 'abc'")
    assert run_cli(tune_main, [*base, "--project", "../.."]) == 2
    one_error_line(capsys.readouterr().err, "must be a plain folder name")
    assert not (tmp_path / "t").exists()


# ---------------------------------------------------------------------------- 7. types
@pytest.mark.parametrize(
    "extra,needle",
    [
        (["--model-kwargs", '{"units": [64], "dropout": "maybe"}'], "option 'dropout' must be a finite number"),
        (["--model-kwargs", '{"units": 2.7}'], "option 'units' must be a non-empty list of whole numbers"),
        (["--config", "{cfg}:batch_size=2.7"], "'batch_size' (--batch-size) must be a whole number"),
        (["--config", "{cfg}:epochs=true"], "'epochs' (--epochs) must be a whole number"),
        (["--config", '{cfg}:epochs="five"'], "'epochs' (--epochs) must be a whole number, got 'five'"),
        (["--config", '{cfg}:early_stopping="yes"'], "'early_stopping' (--early-stopping) must be true or false"),
    ],
)
def test_option_types_are_checked(tmp_path, capsys, extra, needle):
    base = TINY
    if extra[0] == "--config":
        key, _, value = extra[1].split(":", 1)[1].partition("=")
        (tmp_path / "c.json").write_text(json.dumps({key: json.loads(value)}))
        extra = ["--config", str(tmp_path / "c.json")]
        if key == "epochs":  # the flag would win over the file
            base = [a for a in TINY if a not in ("--epochs", "1")]
    assert train([*base, *extra, "--run-dir", str(tmp_path / "run")]) == 2
    one_error_line(capsys.readouterr().err, needle)
    assert not (tmp_path / "run").exists()


def test_simple_cnn_batch_norm_must_be_a_bool():
    from keras_digits.models import build_model

    with pytest.raises(KerasDigitsError, match="option 'batch_norm' must be true or false, got 'maybe'"):
        build_model("simple_cnn", (28, 28, 1), 10, batch_norm="maybe")


# ---------------------------------------------------------------------------- 9. smaller
def test_folder_tree_oddities(tmp_path, capsys):
    from keras_digits.data import load_dataset

    tree = _tree(tmp_path / "t", ("a", "b"), seed=1)
    (tree / "a" / "nested").mkdir()
    for f in sorted((tree / "a").glob("*.png"))[:3]:
        f.rename(tree / "a" / "nested" / f.name)
    bundle = load_dataset("folder", tree, image_size=16)
    assert bundle.num_classes == 2
    assert "class 'a' has subfolders (nested)" in capsys.readouterr().err
    (tree / "bad\nname").mkdir()
    with pytest.raises(KerasDigitsError, match="line break"):
        load_dataset("folder", tree, image_size=16)


def test_unreadable_subfolder_is_named(tmp_path, capsys, monkeypatch):
    from keras_digits.data import load_dataset

    tree = _tree(tmp_path / "t", ("a", "b"), seed=1)
    (tree / "a" / "locked").mkdir()
    real_scandir = os.scandir

    def scandir(path="."):
        if Path(path) == tree / "a" / "locked":
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    load_dataset("folder", tree, image_size=16)
    assert "locked (unreadable folder: Permission denied)" in capsys.readouterr().err


def test_garbage_model_file_is_named_as_such(tmp_path):
    from keras_digits.evaluation.runs import load_run

    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "best.keras").write_bytes(b"garbage")
    with pytest.raises(KerasDigitsError, match="has not finished training"):  # no metrics.json yet
        load_run(tmp_path)
    (tmp_path / "metrics.json").write_text('{"status": "finished"}')
    with pytest.raises(KerasDigitsError, match="not a Keras model file"):
        load_run(tmp_path)


def test_too_few_training_samples_warns_about_missing_classes(capsys):
    from keras_digits.data import load_dataset

    load_dataset("digits", max_train_samples=5)
    assert "classes have no training image" in capsys.readouterr().err


def test_lock_file_names_its_holder(tmp_path):
    from keras_digits.utils.lock import hold

    with hold(tmp_path / "x") as lock:
        holder = json.loads(lock.read_text())
        assert holder["pid"] == os.getpid() and holder["host"] and time.time() > 0
    assert not lock.exists()


@pytest.mark.parametrize("extra", [["--augment", "light"], ["--balance", "resample", "--augment", "light"]])
def test_seed_zero_trains(tmp_path, extra):
    """Seed 0 makes TensorFlow's global seed 0, where its seeded ops reject a tensor op seed: the
    per-epoch pipelines draw with stateless ops only."""
    assert train([*TINY, "--seed", "0", *extra, "--run-dir", str(tmp_path / "run")]) == 0


def test_epoch_keyed_pipelines_repeat_per_epoch_and_differ_between_epochs():
    import tensorflow as tf

    from keras_digits.data.balance import balanced_pipeline
    from keras_digits.data.pipeline import epoch_variable, make_pipeline

    x, y = make_images(60, (4, 4), 3, seed=0)
    epoch = epoch_variable()
    for ds in (
        make_pipeline(x, y, 8, training=True, seed=3, epoch=epoch),
        balanced_pipeline(x, y, 8, seed=3, epoch=epoch),
    ):

        def labels(ds=ds):
            return np.concatenate([b.numpy() for _, b in ds])

        epoch.assign(0)
        first, again = labels(), labels()
        epoch.assign(1)
        second = labels()
        epoch.assign(0)
        assert (first == again).all() and (labels() == first).all() and not (second == first).all()
        assert ds.cardinality().numpy() == len(first) // 8 or ds.cardinality().numpy() == -(-len(first) // 8)
    del tf


def test_evaluate_and_export_refuse_an_unfinished_run(tmp_path, capsys):
    """An interrupted run (no metrics.json) must be resumed, not scored into a fake finished run."""
    from keras_digits.evaluate import main as evaluate_main
    from keras_digits.export import main as export_main

    run = tmp_path / "run"
    assert train([*TINY, "--run-dir", str(run)]) == 0
    (run / "metrics.json").unlink()
    (run / "backup").mkdir()
    assert run_cli(evaluate_main, ["--run", str(run)]) == 2
    one_error_line(capsys.readouterr().err, "has not finished training")
    assert not (run / "metrics.json").exists()
    assert run_cli(export_main, ["--run", str(run), "--out", str(tmp_path / "sm")]) == 2
    one_error_line(capsys.readouterr().err, "has not finished training")


def test_tune_pins_typed_flags_but_not_a_config_file(tmp_path):
    from keras_digits.config import TrainConfig
    from keras_digits.tune.cli import pins_from_flags

    base = TrainConfig(arch="dense")
    assert pins_from_flags(base, {"lr": 0.01, "seed": 3}) == {"lr": 0.01}
    assert "model/dropout" in pins_from_flags(base, {"model_kwargs": {"dropout": 0.5}})


def test_overwrite_replaces_an_interrupted_run_with_another_config(tmp_path):
    from keras_digits.config import TrainConfig
    from keras_digits.training.rundir import prepare_run_dir, staging_dir
    from keras_digits.utils.io import write_json

    run = tmp_path / "run"
    (run / "backup").mkdir(parents=True)
    write_json(run / "config.json", TrainConfig(lr=0.5).to_dict())
    with pytest.raises(KerasDigitsError, match="different config"):
        prepare_run_dir(staging_dir(run, overwrite=False), TrainConfig())
    assert prepare_run_dir(staging_dir(run, overwrite=True), TrainConfig()) is False
    assert not (run / "backup").exists()
