"""Training techniques: optimizers, schedules, balancing, augmentation, normalisation, determinism,
mixed precision and the distribution strategy."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from keras_digits.config import TrainConfig
from keras_digits.errors import KerasDigitsError

REPO = Path(__file__).resolve().parents[1]


def _bundle(name="digits", data_dir=None, n=200, seed=42):
    from keras_digits.data import load_dataset

    return load_dataset(name, data_dir, max_train_samples=n, seed=seed)


def _batches(ds):
    return [(x.numpy(), y.numpy()) for x, y in ds]


def _run_cli(args, env_extra=None, timeout=600):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env_extra or {})}
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )


# ---------------------------------------------------------------------------- optimizers
def test_optimizer_options_reach_keras():
    from keras_digits.training.optim import make_optimizer

    sgd = make_optimizer(TrainConfig(optimizer="sgd", lr=0.05, momentum=0.8))
    assert type(sgd).__name__ == "SGD" and sgd.momentum == pytest.approx(0.8)
    assert float(sgd.learning_rate) == pytest.approx(0.05)
    adamw = make_optimizer(TrainConfig(optimizer="adamw", weight_decay=5e-4))
    assert type(adamw).__name__ == "AdamW" and adamw.weight_decay == pytest.approx(5e-4)
    assert make_optimizer(TrainConfig(optimizer="adamw")).weight_decay == pytest.approx(1e-4)  # AdamW default
    assert make_optimizer(TrainConfig(optimizer="adam")).weight_decay is None
    assert make_optimizer(TrainConfig(optimizer="adam", weight_decay=1e-3)).weight_decay == pytest.approx(1e-3)
    for name, cls in (("nadam", "Nadam"), ("adagrad", "Adagrad"), ("rmsprop", "RMSprop")):
        assert type(make_optimizer(TrainConfig(optimizer=name))).__name__ == cls


def test_sgd_momentum_and_adamw_decay_change_the_update():
    import keras

    from keras_digits.training.optim import make_optimizer

    # SGD with momentum m under a constant gradient g: steps lr*g, then lr*g*(1+m)
    v = keras.Variable(np.zeros(1, np.float32))
    opt = make_optimizer(TrainConfig(optimizer="sgd", lr=0.1, momentum=0.5))
    g = np.ones(1, np.float32)
    opt.apply_gradients([(g, v)])
    first = float(v.numpy()[0])
    opt.apply_gradients([(g, v)])
    assert first == pytest.approx(-0.1)
    assert float(v.numpy()[0]) - first == pytest.approx(-0.1 * 1.5)
    # AdamW with a zero gradient still shrinks the weight by lr * wd * w (decoupled weight decay)
    w = keras.Variable(np.ones(1, np.float32))
    opt = make_optimizer(TrainConfig(optimizer="adamw", lr=0.1, weight_decay=0.01))
    opt.apply_gradients([(np.zeros(1, np.float32), w)])
    assert float(w.numpy()[0]) == pytest.approx(1 - 0.1 * 0.01, abs=1e-6)


# ---------------------------------------------------------------------------- schedules
def test_step_schedule_divides_by_ten_at_half_and_three_quarters():
    from keras_digits.training.callbacks import schedule_lr

    cfg = TrainConfig(schedule="step", lr=0.1, epochs=20)
    lrs = [schedule_lr(cfg, e) for e in range(20)]
    assert lrs[:10] == pytest.approx([0.1] * 10)
    assert lrs[10:15] == pytest.approx([0.01] * 5)
    assert lrs[15:] == pytest.approx([0.001] * 5)
    assert schedule_lr(TrainConfig(lr=0.1), 19) == pytest.approx(0.1)  # schedule none keeps the lr


def test_cosine_schedule_with_warmup():
    from keras_digits.training.callbacks import schedule_lr

    cfg = TrainConfig(schedule="cosine", lr=0.3, epochs=10, warmup_epochs=2)
    lrs = [schedule_lr(cfg, e) for e in range(10)]
    assert lrs[0] == pytest.approx(0.1) and lrs[1] == pytest.approx(0.2)  # linear warm-up
    assert lrs[2] == pytest.approx(0.3)  # peak right after warm-up
    assert all(a > b for a, b in zip(lrs[2:], lrs[3:]))  # then decays monotonically
    assert lrs[-1] > 0 and lrs[-1] < 0.03
    assert schedule_lr(cfg, 6) == pytest.approx(0.3 * 0.5 * (1 + np.cos(np.pi * 4 / 8)))
    no_warm = TrainConfig(schedule="cosine", lr=1.0, epochs=4)
    assert [schedule_lr(no_warm, e) for e in range(4)] == pytest.approx([1.0, 0.8535534, 0.5, 0.1464466])


def test_schedule_callbacks():
    import keras

    from keras_digits.training.callbacks import schedule_callbacks

    assert schedule_callbacks(TrainConfig()) == []
    assert isinstance(schedule_callbacks(TrainConfig(schedule="plateau"))[0], keras.callbacks.ReduceLROnPlateau)
    assert isinstance(schedule_callbacks(TrainConfig(schedule="step"))[0], keras.callbacks.LearningRateScheduler)


# ---------------------------------------------------------------------------- balancing
def test_class_weights_inverse_frequency_mean_one():
    from keras_digits.data.balance import class_weights

    y = np.array([0] * 80 + [1] * 15 + [2] * 5)
    w = class_weights(y, 4)
    present = [w[0], w[1], w[2]]
    assert np.mean(present) == pytest.approx(1.0)
    assert w[2] / w[0] == pytest.approx(16.0) and w[1] / w[0] == pytest.approx(80 / 15)
    assert w[3] == 0.0  # absent class: nothing to weight
    assert class_weights(np.arange(10) % 5, 5) == pytest.approx({c: 1.0 for c in range(5)})
    with pytest.raises(KerasDigitsError):
        class_weights(np.array([], dtype=int), 3)


def test_resampled_batches_are_class_balanced():
    from scipy.stats import chisquare

    from keras_digits.data.balance import balanced_pipeline

    counts = [400, 200, 100, 50, 25, 12]  # skewed, 787 images
    y = np.concatenate([np.full(n, c) for c, n in enumerate(counts)]).astype(np.uint8)
    x = (np.arange(len(y)) % 256).astype(np.uint8).reshape(-1, 1, 1, 1) * np.ones((1, 4, 4, 1), np.uint8)
    ds = balanced_pipeline(x, y, 32, seed=3)
    epoch = _batches(ds)
    assert len(epoch) == len(y) // 32  # an epoch has as many steps as the unbalanced one
    assert epoch[0][0].dtype == np.uint8 and epoch[0][0].shape == (32, 4, 4, 1)
    images, labels = np.concatenate([b[0] for b in epoch]), np.concatenate([b[1] for b in epoch])
    pairs = zip(images[:50], labels[:50])
    assert all((x[y == lab, 0, 0, 0] == img[0, 0, 0]).any() for img, lab in pairs)  # pixels stay with labels
    seen = np.concatenate([labels] + [np.concatenate([b[1] for b in _batches(ds)]) for _ in range(5)])
    assert len(seen) > 3000
    observed = np.bincount(seen, minlength=len(counts))
    assert chisquare(observed).pvalue > 0.001  # uniform over classes, within sampling noise
    assert chisquare(np.bincount(y)).pvalue < 1e-20  # the input is clearly not
    again = _batches(balanced_pipeline(x, y, 32, seed=3))
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(epoch, again))  # seeded: reproducible


def test_make_datasets_balance_modes():
    from keras_digits.data.datasets import make_datasets

    bundle = _bundle(n=150)
    plain = make_datasets(TrainConfig(batch_size=32), bundle)
    assert plain.class_weight is None and "class_weight" not in plain.fit_kwargs()
    weighted = make_datasets(TrainConfig(balance="class_weight", batch_size=32), bundle)
    assert set(weighted.fit_kwargs()["class_weight"]) == set(range(10))
    resampled = make_datasets(TrainConfig(balance="resample", batch_size=32), bundle)
    assert resampled.class_weight is None
    assert len(_batches(resampled.train)) == 150 // 32
    val_plain = _batches(plain.val)
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(val_plain, _batches(resampled.val)))


def test_skewed_training_split_is_long_tailed():
    from keras_digits.data.balance import long_tail_counts, skew_training_split

    assert list(long_tail_counts(np.array([100] * 3), 4.0)) == [100, 50, 25]
    bundle = _bundle(n=400)
    skewed = skew_training_split(bundle, ratio=10)
    counts = np.bincount(skewed.train[1], minlength=10)
    assert counts[0] == np.bincount(bundle.train[1])[0] and counts[9] < counts[0] / 5 and counts.min() >= 1
    assert skewed.val[1] is bundle.val[1] and skewed.test[1] is bundle.test[1]


# ---------------------------------------------------------------------------- augmentation
@pytest.mark.parametrize(
    "spec",
    [
        "rotate=0.1:15,translate=0.1:0.1,zoom=0.1:0.1,flip=0.5:horizontal,contrast=0.1:0.2",
        "rotate",
        "rotate=0.3",
        "rot90=0.5",
        "zoom=:0.2",
        "brightness=1:0.5,shear=0:0.1",
    ],
)
def test_augment_spec_parses(spec):
    from keras_digits.data.augment import parse_spec

    ops = parse_spec(spec)
    assert [o.name for o in ops] == [p.split("=")[0] for p in spec.split(",")]
    assert all(0 <= o.prob <= 1 for o in ops)


def test_augment_spec_defaults():
    from keras_digits.data.augment import DEFAULT_PROB, parse_spec

    (op,) = parse_spec("rotate")
    assert op.prob == DEFAULT_PROB == 0.1 and op.param == 10.0
    (op,) = parse_spec("flip=0.5:vertical")
    assert op.param == "vertical"


@pytest.mark.parametrize(
    "spec, words",
    [
        ("spin=0.1:5", "unknown op"),
        ("rotate=2:10", "probability"),
        ("rotate=x:10", "number"),
        ("rotate=0.1:400", "parameter"),
        ("flip=0.5:diagonal", "flip mode"),
        ("rotate,rotate", "twice"),
        ("rot90=0.5:3", "no parameter"),
        ("rotate=0.1:", "needs a parameter"),
        ("rotate,,zoom", "empty"),
        ("zoom=0.1:0", "parameter"),
    ],
)
def test_bad_augment_spec_is_one_clear_line(spec, words):
    from keras_digits.data.augment import make_augment

    with pytest.raises(KerasDigitsError) as err:
        make_augment(spec, "mnist")
    assert words in str(err.value) and "\n" not in str(err.value)


def test_colour_ops_refuse_greyscale():
    from keras_digits.data.augment import make_augment

    with pytest.raises(KerasDigitsError, match="RGB"):
        make_augment("hue=0.5:0.1", "mnist", channels=1)
    assert make_augment("hue=0.5:0.1", "pathmnist", channels=3) is not None


def test_presets_are_dataset_safe():
    from keras_digits.data.augment import AUGMENTS, make_augment, parse_spec, resolve_spec

    for dataset in ("mnist", "digits", "svhn", "folder", "some_new_set"):
        for preset in ("light", "strong"):
            ops = {o.name: o for o in parse_spec(resolve_spec(preset, dataset))}
            assert "flip" not in ops and "rot90" not in ops, (dataset, preset)
            assert ops["rotate"].param <= 15
    for preset in ("light", "strong"):
        histo = {o.name: o for o in parse_spec(resolve_spec(preset, "pathmnist"))}
        assert histo["flip"].param == "horizontal_and_vertical" and "rot90" in histo
        cifar = {o.name: o for o in parse_spec(resolve_spec(preset, "cifar10"))}
        assert cifar["flip"].param == "horizontal"
    light = parse_spec(resolve_spec("light", "mnist"))
    assert {o.prob for o in light} == {0.1}  # the reports' per-op probability
    assert make_augment("none", "mnist") is None and AUGMENTS == ("none", "light", "strong")


def test_validation_never_augmented_training_is(mnist_like_dir):
    from keras_digits.data.datasets import make_datasets

    bundle = _bundle("mnist", mnist_like_dir, n=128)
    plain = make_datasets(TrainConfig(dataset="mnist", batch_size=32), bundle)
    aug = make_datasets(TrainConfig(dataset="mnist", batch_size=32, augment="rotate=1:15,zoom=0.5:0.2"), bundle)
    val_a, val_b = _batches(plain.val), _batches(aug.val)
    assert len(val_a) == len(val_b) > 0
    for (xa, ya), (xb, yb) in zip(val_a, val_b):
        assert np.array_equal(xa, xb) and np.array_equal(ya, yb)
    tr_a, tr_b = _batches(plain.train), _batches(aug.train)
    assert tr_b[0][0].dtype == np.uint8 and tr_b[0][0].shape == tr_a[0][0].shape
    for (_, ya), (_, yb) in zip(tr_a, tr_b):
        assert np.array_equal(ya, yb)  # same seeded order; only the pixels change
    changed = np.mean([not np.array_equal(a, b) for (xa, _), (xb, _) in zip(tr_a, tr_b) for a, b in zip(xa, xb)])
    assert changed > 0.9  # rotate with probability 1: nearly every image differs
    again = _batches(aug.train)  # the next epoch: new random transforms
    assert any(not np.array_equal(a[0], b[0]) for a, b in zip(tr_b, again))
    rebuilt = _batches(
        make_datasets(TrainConfig(dataset="mnist", batch_size=32, augment="rotate=1:15,zoom=0.5:0.2"), bundle).train
    )
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(tr_b, rebuilt))  # one seed, one stream


def test_augment_probability_is_per_image():
    import tensorflow as tf

    from keras_digits.data.augment import augment_dataset, make_augment

    x = np.tile(np.arange(64, dtype=np.uint8).reshape(1, 8, 8, 1) * 3, (2000, 1, 1, 1))
    ds = tf.data.Dataset.from_tensors((x, np.zeros(2000, np.int32)))
    fn = make_augment("flip=0.25:horizontal", "cifar10")
    ((out, _),) = [(a.numpy(), b) for a, b in augment_dataset(ds, fn, seed=1)]
    flipped = np.mean([not np.array_equal(o, x[0]) for o in out])
    assert 0.2 < flipped < 0.3
    assert all(np.array_equal(o, x[0]) or np.array_equal(o, x[0][:, ::-1]) for o in out[:100])
    # the plain ds.map((images, labels)) contract of make_augment still works
    ((direct, _),) = [(a.numpy(), b) for a, b in ds.map(fn)]
    assert direct.dtype == np.uint8 and 0.15 < np.mean([not np.array_equal(o, x[0]) for o in direct]) < 0.35


@pytest.mark.filterwarnings("ignore:.*not byte-identical")
def test_histology_preset_runs_on_rgb(pathmnist_dir):
    from keras_digits.data.datasets import make_datasets

    bundle = _bundle("pathmnist", pathmnist_dir, n=64)
    pipes = make_datasets(TrainConfig(dataset="pathmnist", augment="strong", batch_size=32), bundle)
    (x, y), *_ = _batches(pipes.train)
    assert x.dtype == np.uint8 and x.shape == (32, 28, 28, 3)


# ---------------------------------------------------------------------------- normalisation
def test_normalization_stats_from_training_split_only():
    from dataclasses import replace

    from keras_digits.data.datasets import make_datasets, normalization_stats

    bundle = _bundle(n=150)
    x_val, y_val = bundle.val
    poisoned = replace(
        bundle, val=(np.full_like(x_val, 255), y_val), test=(np.full_like(bundle.test[0], 255), bundle.test[1])
    )
    stats = make_datasets(TrainConfig(normalize="dataset"), poisoned).input_stats
    x = bundle.train[0].astype(np.float64) / 255
    assert stats[0] == pytest.approx((x.mean(),)) and stats[1] == pytest.approx((x.std(),))
    assert make_datasets(TrainConfig(), bundle).input_stats is None
    from keras_digits.models.normalize import imagenet_stats

    assert normalization_stats("imagenet", bundle.train[0]) is None  # the model's constants, not the data's
    rgb = imagenet_stats(3)
    assert rgb[0] == pytest.approx((0.485, 0.456, 0.406))
    grey = imagenet_stats(1)
    assert len(grey[0]) == 1 and grey[0][0] == pytest.approx(np.mean((0.485, 0.456, 0.406)))
    chunked = normalization_stats("dataset", bundle.train[0], chunk_values=7 * 28 * 28)  # 7 images a chunk
    assert chunked[0] == pytest.approx(stats[0]) and chunked[1] == pytest.approx(stats[1])


def test_normalization_layer_standardises_raw_pixels():
    import keras

    from keras_digits.models import build_model
    from keras_digits.models.normalize import add_input_normalization

    model = build_model("dense", (8, 8, 1), 3)
    wrapped = add_input_normalization(model, ((0.2,), (0.5,)))
    assert [layer.name for layer in wrapped.layers[:3]] == ["image", "input_normalize", "rescale"]
    assert wrapped.count_params() == model.count_params()
    probe = keras.Model(wrapped.inputs, wrapped.get_layer("rescale").output)
    x = np.random.default_rng(0).integers(0, 256, (4, 8, 8, 1)).astype(np.uint8)
    expected = (x / 255.0 - 0.2) / 0.5  # the network's first layer sees standardised pixels
    assert np.allclose(probe.predict(x, verbose=0), expected, atol=1e-4)
    x2 = (255 * (expected * 1.0)).astype(np.float32)  # same weights, standardised by hand
    assert np.allclose(wrapped.predict(x, verbose=0), model.predict(x2, verbose=0), atol=1e-5)


def test_build_for_needs_stats_for_dataset_normalize():
    from keras_digits.training.setup import build_for

    with pytest.raises(KerasDigitsError, match="statistics"):
        build_for(TrainConfig(arch="dense", normalize="dataset"), (8, 8, 1), 3)
    model = build_for(TrainConfig(arch="dense", normalize="imagenet"), (8, 8, 1), 3)
    assert model.get_layer("input_normalize") is not None


def test_normalized_run_saves_model_taking_raw_pixels(tmp_path):
    import keras

    from keras_digits.evaluation.metrics import evaluate_model
    from keras_digits.evaluation.runs import load_run
    from keras_digits.training.run import train_and_evaluate

    cfg = TrainConfig(
        arch="dense",
        dataset="digits",
        max_train_samples=120,
        epochs=1,
        normalize="dataset",
        verbose=0,
        evaluate_test=False,
    )
    metrics = train_and_evaluate(cfg, tmp_path / "run")
    _, model = load_run(tmp_path / "run")
    layer = model.get_layer("input_normalize")
    bundle = _bundle(n=120)
    x_train = bundle.train[0].astype(np.float64) / 255
    assert np.ravel(keras.ops.convert_to_numpy(layer.mean)) == pytest.approx([255 * x_train.mean()], rel=1e-4)
    assert model.inputs[0].shape[1:] == (28, 28, 1)
    again = evaluate_model(model, *bundle.val, bundle.label_names)  # raw uint8 pixels in
    assert again["accuracy"] == pytest.approx(metrics["val"]["accuracy"])


# ---------------------------------------------------------------------------- determinism
def test_deterministic_runs_give_identical_metrics(tmp_path):
    args = [
        "keras_digits.train",
        "--dataset",
        "digits",
        "--arch",
        "dense",
        "--max-train-samples",
        "120",
        "--epochs",
        "2",
        "--batch-size",
        "16",
        "--deterministic",
        "--augment",
        "light",
        "--seed",
        "7",
        "--verbose",
        "0",
        "--no-evaluate-test",
    ]
    metrics = []
    for name in ("a", "b"):
        proc = _run_cli(args + ["--run-dir", str(tmp_path / name)])
        assert proc.returncode == 0, proc.stderr[-2000:]
        m = json.loads((tmp_path / name / "metrics.json").read_text())
        m.pop("train_seconds")
        metrics.append(m)
    assert metrics[0] == metrics[1]


# ---------------------------------------------------------------------------- mixed precision
def test_mixed_precision_model_outputs_float32():
    import keras

    from keras_digits.training.setup import build_for, compile_model

    try:
        keras.mixed_precision.set_global_policy("mixed_float16")
        cfg = TrainConfig(arch="dense", normalize="imagenet")
        model = build_for(cfg, (8, 8, 1), 3)
        assert str(model.outputs[0].dtype) == "float32"
        assert model.layers[-1].name == "predictions_float32"
        compile_model(model, cfg)
        assert type(model.optimizer).__name__ == "LossScaleOptimizer"  # Keras adds loss scaling
    finally:
        keras.mixed_precision.set_global_policy("float32")
    plain = build_for(TrainConfig(arch="dense"), (8, 8, 1), 3)
    assert plain.layers[-1].name == "predictions"


# ---------------------------------------------------------------------------- distribution strategy
def test_default_and_auto_strategy_on_cpu():
    import tensorflow as tf

    from keras_digits.runtime.strategy import get_strategy, replicas

    assert replicas(get_strategy("default")) == 1
    if len(tf.config.list_logical_devices("GPU")) < 2:
        assert replicas(get_strategy("auto")) == 1
    with pytest.raises(KerasDigitsError):
        get_strategy("tpu")


def test_mirrored_strategy_on_two_logical_cpus(tmp_path):
    run_dir = tmp_path / "run"
    proc = _run_cli(
        [
            "keras_digits.train",
            "--dataset",
            "digits",
            "--arch",
            "dense",
            "--max-train-samples",
            "128",
            "--epochs",
            "1",
            "--batch-size",
            "16",
            "--strategy",
            "mirrored",
            "--verbose",
            "2",
            "--no-evaluate-test",
            "--run-dir",
            str(run_dir),
        ],
        env_extra={"KERAS_DIGITS_LOGICAL_CPUS": "2", "CUDA_VISIBLE_DEVICES": ""},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "MirroredStrategy, 2 replica(s)" in proc.stdout
    assert "4/4" in proc.stdout  # 128 images / (16 per replica x 2 replicas) = 4 steps
    assert (run_dir / "metrics.json").is_file()


def test_precise_bn_under_the_mirrored_strategy(tmp_path):
    """The recalibration runs in cross-replica context under the mirrored strategy and the run finishes with it."""
    run_dir = tmp_path / "run"
    proc = _run_cli(
        ["keras_digits.train", "--dataset", "digits", "--arch", "simple_cnn", "--max-train-samples", "128"]
        + ["--epochs", "1", "--batch-size", "16", "--strategy", "mirrored", "--precise-bn", "3", "--verbose", "2"]
        + ["--no-evaluate-test", "--run-dir", str(run_dir)],
        env_extra={"KERAS_DIGITS_LOGICAL_CPUS": "2", "CUDA_VISIBLE_DEVICES": ""},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "precise BatchNorm before each validation: 3 batches (--precise-bn)" in proc.stdout
    header = (run_dir / "history.csv").read_text().splitlines()[0]
    assert "precise_bn_seconds" in header and (run_dir / "metrics.json").is_file()
