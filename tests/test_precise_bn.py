"""Issue 27: BatchNorm population statistics that fit the weights (precise BN), the collapse detector, and
the defaults of the keras.applications families."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
from keras import layers

from keras_digits.config import TrainConfig
from keras_digits.errors import KerasDigitsError
from keras_digits.models import registry
from keras_digits.training.collapse import chance_level, collapse_signs, mode_check
from keras_digits.training.precise_bn import Recalibrator, batchnorm_layers, plan_precise_bn

ARCH = "bn_stack_test"


def bn_stack(input_shape, num_classes, *, momentum=0.99):
    """Six Conv + BatchNorm(momentum 0.99, as keras.applications) + ReLU blocks on a 7x7 map: BN-heavy and quick."""
    inputs = keras.Input(input_shape, dtype="uint8")
    h = layers.Rescaling(1 / 255.0)(inputs)
    h = layers.AveragePooling2D(4)(h)
    for i, filters in enumerate((32, 32, 64, 64, 64, 64)):
        h = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"conv{i}")(h)
        h = layers.BatchNormalization(momentum=momentum, name=f"bn{i}")(h)
        h = layers.ReLU()(h)
    h = layers.GlobalAveragePooling2D()(h)
    return keras.Model(inputs, layers.Dense(num_classes, activation="softmax", name="predictions")(h))


@pytest.fixture
def bn_arch(monkeypatch):
    registry._ensure_loaded()
    monkeypatch.setitem(registry._REGISTRY, ARCH, registry.ModelInfo(ARCH, bn_stack, "test: BN-heavy stack"))
    return ARCH


def digits_arrays(n_train=1000):
    from sklearn.datasets import load_digits

    d = load_digits()
    x = np.repeat(np.repeat((d.images * 16).clip(0, 255).astype("uint8"), 4, axis=1), 4, axis=2)[..., None]
    return (x[:n_train], d.target[:n_train]), (x[n_train:], d.target[n_train:])


def trained_one_epoch(seed=0):
    keras.utils.set_random_seed(seed)
    (xtr, ytr), test = digits_arrays()
    model = bn_stack((32, 32, 1), 10)
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(xtr, ytr, batch_size=32, epochs=1, verbose=0)  # 32 steps: the moving averages are mostly initial
    return model, (xtr, ytr), test


def accuracy(model, x, y) -> float:
    return float(np.mean(np.asarray(model.predict(x, verbose=0)).argmax(axis=1) == y))


# ---------------------------------------------------------------------------- the recalibration itself
def test_recalibration_brings_inference_mode_to_what_the_weights_learnt():
    model, (xtr, ytr), (xte, yte) = trained_one_epoch()
    before = accuracy(model, xte, yte)
    weights = [np.array(w) for w in model.trainable_weights]
    momenta = [layer.momentum for layer in batchnorm_layers(model)]
    assert Recalibrator(model, xtr[:320], 32)() == 6
    after = accuracy(model, xte, yte)
    assert before < 0.4 < 0.8 < after, (before, after)  # at chance before, far above it after
    for w, w0 in zip(model.trainable_weights, weights):  # only the statistics change
        np.testing.assert_array_equal(np.array(w), w0)
    assert [layer.momentum for layer in batchnorm_layers(model)] == momenta
    # a plain cumulative average of the batches' statistics: the first layer's mean is computable by hand
    first = keras.Model(model.input, model.get_layer("conv0").output)
    feats = np.asarray(first.predict(xtr[:320], verbose=0), np.float64)
    expected = np.mean([feats[i : i + 32].mean(axis=(0, 1, 2)) for i in range(0, 320, 32)], axis=0)
    np.testing.assert_allclose(np.array(model.get_layer("bn0").moving_mean), expected, rtol=1e-4, atol=1e-5)


def test_recalibration_is_deterministic_and_leaves_frozen_layers_alone():
    model, (xtr, _), _ = trained_one_epoch()
    frozen = model.get_layer("bn5")
    frozen.trainable = False
    kept = [np.array(v) for v in (frozen.moving_mean, frozen.moving_variance)]
    Recalibrator(model, xtr[:96], 32)()
    first = [np.array(layer.moving_variance) for layer in batchnorm_layers(model)]
    Recalibrator(model, xtr[:96], 32)()
    assert all(np.array_equal(a, np.array(b.moving_variance)) for a, b in zip(first, batchnorm_layers(model)))
    np.testing.assert_array_equal(np.array(frozen.moving_mean), kept[0])
    np.testing.assert_array_equal(np.array(frozen.moving_variance), kept[1])
    assert len(batchnorm_layers(model)) == 5 and len(batchnorm_layers(model, trainable_only=False)) == 6


def test_plan_auto_on_where_the_averages_lag_and_off_elsewhere():
    heavy = bn_stack((32, 32, 1), 10)  # momentum 0.99
    light = bn_stack((32, 32, 1), 10, momentum=0.9)
    plan = plan_precise_bn(None, heavy, steps_per_epoch=41, batch_size=32)
    assert plan.batches == 20 and "66%" in plan.reason  # 0.99^41: the digits' epoch
    assert plan_precise_bn(None, heavy, steps_per_epoch=10, batch_size=32).batches == 10  # never past an epoch
    assert plan_precise_bn(None, heavy, steps_per_epoch=1688, batch_size=32).batches == 0  # MNIST: the EMA is fine
    assert plan_precise_bn(None, light, steps_per_epoch=41, batch_size=32).batches == 0  # 0.9^41 = 1.3 %
    assert plan_precise_bn(None, heavy, steps_per_epoch=None, batch_size=128).batches == 5
    assert plan_precise_bn(0, heavy, 41, 32).batches == 0
    assert plan_precise_bn(7, light, 1688, 32).batches == 7
    dense = keras.Sequential([keras.Input((4,)), layers.Dense(2)])
    assert plan_precise_bn(7, dense, 41, 32).batches == 0  # nothing to recompute


# ---------------------------------------------------------------------------- the collapse detector
def test_detector_fires_on_a_collapse_and_stays_quiet_on_a_healthy_model():
    model, (xtr, _), (xte, yte) = trained_one_epoch()
    stats = [np.array(v) for layer in batchnorm_layers(model) for v in (layer.moving_mean, layer.moving_variance)]
    modes = mode_check(model, xte[:64], yte[:64])
    after = [np.array(v) for layer in batchnorm_layers(model) for v in (layer.moving_mean, layer.moving_variance)]
    assert all(np.array_equal(a, b) for a, b in zip(stats, after))  # the training-mode call changed nothing
    assert modes["agreement"] < 0.5 and modes["training_mode_accuracy"] > 0.8, modes
    signs = collapse_signs(0.93, 0.11, 0.1, {**modes, "top_share": 1.0})
    assert len(signs) == 2 and "near chance" in signs[0] and "agree on" in signs[1]
    # near chance counts only for a model that answers one class: a weak model on imbalanced data does not
    assert collapse_signs(0.87, 0.74, 0.73, {"images": 64, "top_share": 0.8}) == []
    assert len(collapse_signs(0.87, 0.74, 0.73, {"images": 64, "top_share": 0.95})) == 1
    Recalibrator(model, xtr[:320], 32)()
    healthy = mode_check(model, xte[:64], yte[:64])
    assert healthy["agreement"] > 0.8, healthy
    assert collapse_signs(0.93, 0.90, 0.1, healthy) == []
    assert collapse_signs(0.30, 0.11, 0.1, None) == []  # not fitting either: slow, not collapsed
    assert collapse_signs(float("nan"), 0.1, 0.1, None) == []
    assert chance_level([0, 0, 0, 1]) == 0.75  # the majority class's share


# ---------------------------------------------------------------------------- through a run
def run_cfg(tmp_path, name, **kw):
    return TrainConfig(**{"arch": ARCH, "epochs": 1, "patience": 0, "seed": 1, "verbose": 0, **kw}), tmp_path / name


def test_a_bn_heavy_run_scores_far_above_chance(tmp_path, bn_arch):
    """Fails on the code before issue 27: the same run scored at chance (the moving averages were still
    mostly their initial values when validation, the checkpoint and the test score used them)."""
    from keras_digits.reporting.html import run_page
    from keras_digits.training.run import train_and_evaluate

    cfg, run_dir = run_cfg(tmp_path, "fixed")
    metrics = train_and_evaluate(cfg, run_dir)
    assert metrics["test"]["accuracy"] > 0.6, metrics["test"]["accuracy"]
    header = (run_dir / "history.csv").read_text().splitlines()[0].split(",")
    assert "precise_bn_seconds" in header
    assert not (run_dir / "collapse.json").exists()  # healthy: the detector stays quiet
    assert "Collapse warning" not in run_page(run_dir)


def test_the_detector_names_a_collapsed_run_in_its_report(tmp_path, bn_arch, capsys):
    from keras_digits.reporting.html import run_page
    from keras_digits.training.run import train_and_evaluate

    cfg, run_dir = run_cfg(tmp_path, "planted", precise_bn=0, verbose=2)
    metrics = train_and_evaluate(cfg, run_dir)
    assert metrics["test"]["accuracy"] < 0.3  # the planted collapse: statistics never recomputed
    out = capsys.readouterr().out
    assert "warning: epoch 1 looks collapsed" in out and "--precise-bn" in out
    record = json.loads((run_dir / "collapse.json").read_text())
    assert record["epochs"][0]["epoch"] == 1 and record["epochs"][0]["signs"]
    assert "Collapse warning" in (run_dir / "report.md").read_text()
    page = run_page(run_dir)
    assert "Collapse warning" in page and "agree on" in page and "still near chance" in page


# ---------------------------------------------------------------------------- flags and defaults
@pytest.mark.parametrize("text, value", [("auto", None), ("off", 0), ("0", 0), ("12", 12)])
def test_precise_bn_flag(text, value):
    import argparse

    from keras_digits.training.flags import add_train_flags, config_from_args

    parser = argparse.ArgumentParser()
    add_train_flags(parser)
    assert config_from_args(parser.parse_args(["--precise-bn", text])).precise_bn == value


def test_bad_precise_bn_is_one_line(capsys):
    from keras_digits import train

    with pytest.raises(SystemExit) as exc:  # argparse: usage and one error line
        train.main(["--precise-bn", "lots"])
    assert exc.value.code == 2
    assert "expected auto, off or a number of batches" in capsys.readouterr().err
    with pytest.raises(KerasDigitsError, match="--precise-bn"):
        TrainConfig(precise_bn=-1)


def test_vgg16_freezes_a_loaded_base_and_trains_a_random_one(tmp_path):
    from keras_digits.models import build_model

    random_base = build_model("vgg16", (28, 28, 1), 10)
    assert random_base.get_layer("base").trainable
    # its convolutions start He-normal (std sqrt(2 / fan_in)), not Glorot-uniform (std sqrt(2 / (fan_in + fan_out)))
    kernel = np.array(random_base.get_layer("base").get_layer("block3_conv1").kernel)  # 3x3x128 -> 256
    assert abs(kernel.std() / np.sqrt(2 / (9 * 128)) - 1) < 0.05
    path = tmp_path / "vgg.weights.h5"
    random_base.get_layer("base").save_weights(path)
    loaded = build_model("vgg16", (28, 28, 1), 10, weights=str(path))
    assert not loaded.get_layer("base").trainable  # transfer learning: only the head trains
    assert build_model("vgg16", (28, 28, 1), 10, weights=str(path), freeze_base=False).get_layer("base").trainable


def test_tuning_trials_recalibrate_too(tmp_path, bn_arch, monkeypatch):
    """A KerasTuner trial validates (and keeps its checkpoint) with recomputed statistics, as train does:
    on the code before issue 27 this trial scored at chance."""
    pytest.importorskip("keras_tuner")
    from keras_digits.training import precise_bn
    from keras_digits.tune import cli as tune_cli
    from keras_digits.utils.cli import run_cli

    for name in ("KERASTUNER_TUNER_ID", "KERASTUNER_ORACLE_IP", "KERASTUNER_ORACLE_PORT"):
        monkeypatch.delenv(name, raising=False)
    calls = []
    original = precise_bn.Recalibrator.__call__
    monkeypatch.setattr(precise_bn.Recalibrator, "__call__", lambda self: calls.append(1) or original(self))
    args = ["--arch", ARCH, "--max-epochs", "1", "--max-trials", "1", "--verbose", "0", "--no-tensorboard"]
    args += ["--fixed", "batch_size=32", "--fixed", "lr=0.001", "--fixed", "optimizer=adam"]
    args += ["--fixed", "schedule=none", "--fixed", "augment=none", "--fixed", "balance=none"]
    assert run_cli(tune_cli.main, [*args, "--directory", str(tmp_path), "--project", "p"]) == 0
    trial = json.loads(next((tmp_path / "p").glob("trial_*/trial.json")).read_text())
    assert calls and trial["score"] > 0.6, (len(calls), trial["score"])


@pytest.mark.slow  # ~45 s: two subprocess runs (the recalibration's own determinism is tested above)
def test_deterministic_runs_with_precise_bn_are_identical(tmp_path):
    """--deterministic: the recalibration's sample, order and sums are fixed, so two runs agree exactly."""
    import os
    import subprocess
    import sys

    from conftest import REPO

    args = [sys.executable, "-m", "keras_digits.train", "--arch", "simple_cnn", "--max-train-samples", "120"]
    args += ["--epochs", "2", "--batch-size", "16", "--deterministic", "--seed", "5", "--verbose", "2"]
    args += ["--no-evaluate-test"]
    out = []
    for name in ("a", "b"):
        proc = subprocess.run(
            [*args, "--run-dir", str(tmp_path / name)],
            cwd=REPO,
            capture_output=True,
            text=True,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "precise BatchNorm before each validation: 8 batches (auto)" in proc.stdout
        m = json.loads((tmp_path / name / "metrics.json").read_text())
        m.pop("train_seconds")
        model = keras.saving.load_model(tmp_path / name / "best.keras", compile=False)
        out.append(
            (m, [np.array(v) for layer in batchnorm_layers(model) for v in (layer.moving_mean, layer.moving_variance)])
        )
    assert out[0][0] == out[1][0]
    assert all(np.array_equal(a, b) for a, b in zip(out[0][1], out[1][1]))


def test_a_history_resumed_under_another_column_set_keeps_its_header(tmp_path):
    """A run interrupted before precise_bn_seconds existed and resumed after: rows stay under their header."""
    import csv

    from keras_digits.training.callbacks import HistoryLog

    path = tmp_path / "history.csv"
    path.write_text("epoch,accuracy,epoch_seconds,loss,val_accuracy\n0,0.5,1.0,1.2,0.4\n")
    log = HistoryLog(str(path), append=True)
    log.on_train_begin()
    log.on_epoch_end(
        1, {"accuracy": 0.6, "epoch_seconds": 1.1, "loss": 1.0, "precise_bn_seconds": 0.2, "val_accuracy": 0.5}
    )
    log.on_train_end()
    rows = list(csv.DictReader(path.open()))
    assert list(rows[1]) == ["epoch", "accuracy", "epoch_seconds", "loss", "val_accuracy"]
    assert rows[1]["val_accuracy"] == "0.5" and rows[1]["loss"] == "1.0"


def test_precise_bn_in_a_config_file_takes_the_flags_words():
    assert TrainConfig.from_dict({"precise_bn": "auto"}).precise_bn is None
    assert TrainConfig.from_dict({"precise_bn": "off"}).precise_bn == 0
    with pytest.raises(KerasDigitsError, match="precise_bn"):
        TrainConfig.from_dict({"precise_bn": "lots"})


def test_cpu_isa_names_the_level_and_a_restriction():
    from keras_digits.runtime.precision import cpu_isa

    assert cpu_isa({"avx2", "fma"}, "") == "AVX2"
    assert cpu_isa({"avx2", "avx512f"}, "") == "AVX-512"
    assert cpu_isa({"avx2", "avx512f", "amx_tile", "amx_bf16"}, "") == "AMX"
    assert cpu_isa({"avx2", "avx512f", "amx_tile"}, "AVX2") == "AVX2 (ONEDNN_MAX_CPU_ISA=AVX2; the CPU has AMX)"
    assert cpu_isa({"avx2"}, "AVX512_CORE") == "AVX2"  # a cap above the CPU changes nothing
    assert cpu_isa({"sse4_1"}, "") == "SSE4.1"
    amx = {"avx2", "avx512f", "amx_tile", "amx_bf16"}
    assert cpu_isa(amx, "AVX10_1_512_AMX") == cpu_isa(amx, "AVX512_CORE_AMX_FP16") == "AMX"
    assert cpu_isa(amx, "AVX10_1_512").startswith("AVX-512 (")  # an AVX-512 cap that names no AMX


def test_collapse_section_escapes_what_the_file_holds(tmp_path):
    from keras_digits.reporting.html import collapse_section

    record = {
        "chance": 0.1,
        "near_chance_below": 0.235,
        "advice": "<script>x</script>",
        "epochs": [{"epoch": "<b>1</b>", "signs": ["<img src=x>"], "accuracy": 0.9, "val_accuracy": 0.1}],
    }
    (tmp_path / "collapse.json").write_text(json.dumps(record))
    html = collapse_section(tmp_path, {"val": {"accuracy": 0.98}})
    assert "<script>" not in html and "<img" not in html and "<b>1" not in html
    assert "above the near-chance level" in html
    assert "not recorded" in collapse_section(tmp_path, {})
