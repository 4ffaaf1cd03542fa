"""Transfer learning from the CLI: --weights PATH / imagenet, --freeze-base, two-phase --fine-tune-at."""

from __future__ import annotations

import subprocess
import sys

import pytest

from keras_digits.train import main as train_main


@pytest.fixture
def base_weights(tmp_path):
    """A weights file for the resnet50 base, written by the test itself (no ImageNet file here)."""
    from keras_digits.models import build_model

    model = build_model("resnet50", (28, 28, 1), 10, image_size=32)
    path = tmp_path / "base.weights.h5"
    model.get_layer("base").save_weights(path)
    return path, model.get_layer("base").get_weights()[0]


@pytest.mark.slow
def test_weights_path_then_two_phase_fine_tuning(tmp_path, mnist_like_dir, base_weights, capsys):
    import keras

    path, first_kernel = base_weights
    run = tmp_path / "run"
    assert (
        train_main(
            [
                "--arch",
                "resnet50",
                "--image-size",
                "32",
                "--dataset",
                "mnist",
                "--data-dir",
                str(mnist_like_dir),
                "--weights",
                str(path),
                "--epochs",
                "1",
                "--fine-tune-at",
                "150",
                "--fine-tune-epochs",
                "1",
                "--max-train-samples",
                "64",
                "--batch-size",
                "16",
                "--no-early-stopping",
                "--run-dir",
                str(run),
                "--verbose",
                "1",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "fine-tuning:" in out and "from #150 unfrozen" in out
    rows = (run / "history.csv").read_text().strip().splitlines()
    assert len(rows) == 3  # header + head phase + fine-tuning phase, one history
    header = rows[0].split(",")
    col = header.index("learning_rate")
    lrs = [float(r.split(",")[col]) for r in rows[1:]]
    assert lrs[1] == pytest.approx(lrs[0] * 0.1)
    model = keras.models.load_model(run / "best.keras", compile=False)
    base = model.get_layer("base")
    assert not base.layers[10].trainable
    tail = [l for l in base.layers[150:] if not isinstance(l, keras.layers.BatchNormalization) and l.weights]
    assert tail and all(l.trainable for l in tail)


def test_fine_tune_needs_a_pretrained_family(tmp_path, mnist_like_dir):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "keras_digits.train",
            "--arch",
            "dense",
            "--dataset",
            "mnist",
            "--data-dir",
            str(mnist_like_dir),
            "--epochs",
            "1",
            "--fine-tune-at",
            "3",
            "--run-dir",
            str(tmp_path / "r"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2 and "--fine-tune-at needs a pretrained family" in proc.stderr


def test_imagenet_weights_uncached_offline_is_one_line(tmp_path, mnist_like_dir):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "keras_digits.train",
            "--arch",
            "xception",
            "--dataset",
            "mnist",
            "--data-dir",
            str(mnist_like_dir),
            "--weights",
            "imagenet",
            "--epochs",
            "1",
            "--run-dir",
            str(tmp_path / "r"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    err = proc.stderr.strip().splitlines()
    assert err[-1].startswith("error:") and "xception_weights_tf_dim_ordering_tf_kernels_notop.h5" in err[-1]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "r" / "best.keras").exists()


def test_weights_on_a_non_pretrained_arch(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "keras_digits.train",
            "--arch",
            "simple_cnn",
            "--weights",
            "imagenet",
            "--run-dir",
            str(tmp_path / "r"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2 and "has no pretrained weights" in proc.stderr


@pytest.mark.slow
def test_run_killed_while_fine_tuning_resumes_in_phase_two(tmp_path, mnist_like_dir, capsys):
    """Phase one is kept when it ends; a rerun after a crash in phase two resumes phase two."""
    import keras

    import keras_digits.training.run as train_mod

    run = tmp_path / "run"
    args = [
        "--arch",
        "vgg16",
        "--image-size",
        "32",
        "--dataset",
        "mnist",
        "--data-dir",
        str(mnist_like_dir),
        "--epochs",
        "1",
        "--fine-tune-at",
        "15",
        "--fine-tune-epochs",
        "2",
        "--max-train-samples",
        "64",
        "--batch-size",
        "16",
        "--no-early-stopping",
        "--run-dir",
        str(run),
        "--verbose",
        "0",
    ]

    class Crash(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            raise RuntimeError("simulated crash")

    original = train_mod.make_callbacks

    def with_crash(*a, **k):
        cbs = original(*a, **k)
        return cbs + [Crash()] if k.get("backup") == train_mod.FINE_TUNE_BACKUP else cbs

    train_mod.make_callbacks = with_crash
    try:
        with pytest.raises(RuntimeError, match="simulated crash"):
            train_main(args)
    finally:
        train_mod.make_callbacks = original
    assert (run / "phase1.json").is_file() and (run / train_mod.FINE_TUNE_BACKUP).is_dir()
    assert train_main([*args[:-1], "1"]) == 0
    assert "resuming the fine-tuning phase" in capsys.readouterr().out
    epochs = [int(r.split(",")[0]) for r in (run / "history.csv").read_text().strip().splitlines()[1:]]
    assert epochs == [0, 1, 2]  # phase one once, phase two's first epoch once, then its second
    assert not (run / "phase1.json").exists() and not (run / "phase1.weights.h5").exists()
    assert (run / "metrics.json").is_file()
