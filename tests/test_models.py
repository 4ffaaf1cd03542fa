"""Tests for the model registry: every registered arch builds, trains, round-trips; golden parameter counts.

Parametrized over `list_models()`, so a newly registered architecture is covered automatically.
Heavy archs are built at their minimum size and with a small `width` where the builder takes one.
"""

from __future__ import annotations

import inspect
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest

from keras_digits.errors import KerasDigitsError
from keras_digits.models import build_model, list_models, model_info
from keras_digits.models.pretrained import IMAGENET_WEIGHTS, resolve_imagenet_weights

ARCHS = list_models()
PRETRAINED = [a for a in ARCHS if model_info(a).pretrained]
# archs whose CPU train step / .keras round trip takes tens of seconds: only under `-m slow` runs
SLOW_TRAIN = {"resnet101", "resnet152", "resnet50", "xception"}  # the default run keeps resnet18/34, vgg16

# keras.applications bases, include_top=False (checked against keras.applications built directly)
BASE_PARAMS = {
    "resnet50": 23_587_712,
    "resnet101": 42_658_176,
    "resnet152": 58_370_944,
    "vgg16": 14_714_688,
    "xception": 20_861_480,
}


def _maybe_slow(archs, slow):
    return [pytest.param(a, marks=pytest.mark.slow) if a in slow else a for a in archs]


def small_kwargs(name: str) -> dict:
    """Cheapest settings for a test build: the arch's minimum size and a small width."""
    info = model_info(name)
    kwargs = {}
    if info.default_size or info.min_size > 28:
        kwargs["image_size"] = max(info.min_size, 28)
    params = inspect.signature(info.builder).parameters
    if "width" in params:
        kwargs["width"] = 0.25 if isinstance(params["width"].default, float) else 8
    return kwargs


def batch(shape=(28, 28, 1), n: int = 8, num_classes: int = 10, seed: int = 0):
    """A tiny learnable batch of raw 0..255 pixels: noise plus a class-dependent bright bar."""
    rng = np.random.RandomState(seed)
    x = rng.uniform(0, 60, size=(n, *shape)).astype("float32")
    y = np.arange(n) % num_classes
    h = shape[0]
    for i, c in enumerate(y):
        r = int(c) * (h - 3) // max(num_classes - 1, 1)
        x[i, r : r + 3, :, :] = 255.0
    return x, y


def count(weights) -> int:
    return int(sum(np.prod(w.shape) for w in weights))


@pytest.fixture(autouse=True)
def _fresh_keras_session():
    yield
    # free the (large) models between tests; Python's own collector frees their cycles (a gc.collect per
    # test, clear_session's default, cost about a second each)
    keras.backend.clear_session(free_memory=False)


# ---------------------------------------------------------------- every arch


SHAPES = [((28, 28, 1), 10), ((28, 28, 3), 9)]


@pytest.mark.parametrize(
    "arch,shape,num_classes",
    [
        pytest.param(a, shape, k, marks=pytest.mark.slow) if (a in SLOW_TRAIN and i > 0) else (a, shape, k)
        for a in ARCHS
        for i, (shape, k) in enumerate(SHAPES)
    ],
)
def test_builds_with_softmax_output(arch, shape, num_classes):
    # the slowest archs build only the grey shape by default, the RGB one under `-m slow`
    info = model_info(arch)
    model = build_model(arch, shape, num_classes, **small_kwargs(arch))
    assert model.input_shape == (None, *shape)
    x, _ = batch(shape, n=3, num_classes=num_classes)
    probs = np.asarray(model(x, training=False))
    assert probs.shape == (3, num_classes)
    assert np.all(probs >= 0)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert model.layers[-1].name == "predictions"
    if info.pretrained:
        base = model.get_layer("base")
        assert base.trainable  # without weights no family is frozen (vgg16 freezes only a loaded base)
        if arch in BASE_PARAMS:
            assert base.count_params() == BASE_PARAMS[arch]
    # uint8 batches are accepted too
    probs8 = np.asarray(model(x.astype("uint8"), training=False))
    assert probs8.shape == (3, num_classes)


@pytest.mark.parametrize("arch", _maybe_slow(ARCHS, SLOW_TRAIN))
def test_training_steps_lower_the_loss(arch):
    keras.utils.set_random_seed(0)
    model = build_model(arch, (28, 28, 1), 10, **small_kwargs(arch))
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy", run_eagerly=True)
    x, y = batch()
    losses = [float(model.train_on_batch(x, y)) for _ in range(5)]
    assert all(np.isfinite(losses)), losses
    assert min(losses[-2:]) < losses[0], losses


@pytest.mark.parametrize("arch", _maybe_slow(ARCHS, SLOW_TRAIN))
def test_keras_round_trip(arch, tmp_path):
    keras.utils.set_random_seed(0)
    model = build_model(arch, (28, 28, 1), 10, **small_kwargs(arch))
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy", run_eagerly=True)
    x, y = batch()
    model.train_on_batch(x, y)  # move BatchNorm statistics away from their initial values
    path = tmp_path / f"{arch}.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(np.asarray(loaded(x, training=False)), np.asarray(model(x, training=False)), atol=1e-5)


@pytest.mark.parametrize("arch", [a for a in ARCHS if model_info(a).min_size > 1])
def test_image_size_below_minimum_is_an_error(arch):
    info = model_info(arch)
    with pytest.raises(KerasDigitsError, match=f"minimum of {info.min_size}"):
        build_model(arch, (28, 28, 1), 10, image_size=info.min_size - 1)


def test_registry_metadata_is_consistent():
    for arch in ARCHS:
        info = model_info(arch)
        assert info.description, arch
        assert info.default_size is None or info.default_size >= info.min_size, arch
        if info.pretrained:
            assert info.channels == 3, arch
            assert {"weights", "freeze_base"} <= info.kwargs_accepted(), arch


def test_unknown_arch_lists_known_names():
    with pytest.raises(KerasDigitsError) as err:
        build_model("no_such_net", (28, 28, 1), 10)
    for name in ("simple_cnn", "resnet18", "vgg16", "cifar_cnn"):
        assert name in str(err.value)


# ---------------------------------------------------------------- golden parameter counts


@pytest.mark.parametrize(
    "arch,shape,kwargs,total,trainable",
    [
        ("simple_cnn_v1", (28, 28, 1), {}, 50_186, 50_186),
        ("simple_cnn", (28, 28, 1), {}, 392_330, 391_370),
        ("cifar_cnn", (32, 32, 3), {}, 37_146, 37_146),
        ("cifar_cnn", (32, 32, 3), {"batch_norm": True}, 37_530, 37_338),
        ("cifar_cnn", (28, 28, 1), {}, 32_058, 32_058),
        ("resnet_cifar", (32, 32, 3), {}, 1_087_722, 1_084_586),
        ("resnet_cifar", (32, 32, 3), {"width": 16}, 274_042, 272_474),
        ("resnet18", (28, 28, 1), {}, 11_182_410, 11_172_810),
        ("resnet34", (28, 28, 1), {}, 21_297_994, 21_280_970),
        ("alexnet", (28, 28, 1), {}, 29_978_314, 29_978_314),
    ],
)
def test_golden_parameter_counts(arch, shape, kwargs, total, trainable):
    model = build_model(arch, shape, 10, **kwargs)
    assert model.count_params() == total
    assert count(model.trainable_weights) == trainable


def test_pretrained_heads_and_freezing():
    vgg = build_model("vgg16", (28, 28, 1), 10, freeze_base=True)
    # frozen base: only Flatten(512) -> Dense 256 -> Dense 10 trains
    assert count(vgg.trainable_weights) == 512 * 256 + 256 + 256 * 10 + 10
    assert vgg.count_params() == BASE_PARAMS["vgg16"] + 512 * 256 + 256 + 256 * 10 + 10
    unfrozen = build_model("vgg16", (28, 28, 1), 10)  # random weights: the whole network trains by default
    assert count(unfrozen.trainable_weights) == unfrozen.count_params()
    res = build_model("resnet50", (28, 28, 3), 10, image_size=32, freeze_base=True)
    assert count(res.trainable_weights) == 2048 * 10 + 10
    assert res.count_params() == BASE_PARAMS["resnet50"] + 2048 * 10 + 10


# ---------------------------------------------------------------- architecture switches


def test_alexnet_batch_norm_switch_really_adds_batch_norm():
    def n_bn(model):
        return sum(isinstance(layer, keras.layers.BatchNormalization) for layer in model.layers)

    assert n_bn(build_model("alexnet", (28, 28, 1), 10, width=0.25)) == 0
    assert n_bn(build_model("alexnet", (28, 28, 1), 10, width=0.25, batch_norm=True)) == 5


def test_alexnet_stem_depends_on_size():
    small = build_model("alexnet", (28, 28, 1), 10, width=0.25)
    assert small.get_layer("conv1_conv").kernel_size == (5, 5)
    big = build_model("alexnet", (28, 28, 1), 10, width=0.25, image_size=128)
    assert big.get_layer("conv1_conv").kernel_size == (11, 11)
    assert big.get_layer("conv1_conv").strides == (4, 4)


@pytest.mark.parametrize("size,small_stem", [(28, True), (63, True), (64, False)])
def test_resnet18_stem_rule(size, small_stem):
    model = build_model("resnet18", (28, 28, 1), 10, image_size=size, width=8)
    names = {layer.name for layer in model.layers}
    assert ("stem_pool" not in names) == small_stem
    assert model.get_layer("stem_conv").kernel_size == ((3, 3) if small_stem else (7, 7))


def test_cifar_cnn_switches():
    plain = build_model("cifar_cnn", (32, 32, 3), 10)
    both = build_model("cifar_cnn", (32, 32, 3), 10, batch_norm=True, dropout=True)
    kinds = lambda m, t: sum(isinstance(layer, t) for layer in m.layers)  # noqa: E731
    assert kinds(plain, keras.layers.Dropout) == 0 and kinds(plain, keras.layers.BatchNormalization) == 0
    assert kinds(both, keras.layers.Dropout) == 3 and kinds(both, keras.layers.BatchNormalization) == 4


@pytest.mark.parametrize(
    "arch,kwargs",
    [
        ("simple_cnn", {}),
        ("alexnet", {"width": 0.125, "batch_norm": True}),
        ("resnet18", {"width": 8}),
        ("resnet_cifar", {"width": 8, "depth": 1}),
        ("cifar_cnn", {"batch_norm": True}),
    ],
)
def test_own_models_use_pytorch_batch_norm_momentum(arch, kwargs):
    """The project's BN layers follow PyTorch's momentum (0.9 in Keras terms), not Keras' 0.99."""
    model = build_model(arch, (28, 28, 1), 10, **kwargs)
    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert bns and all(layer.momentum == pytest.approx(0.9) for layer in bns)


# ---------------------------------------------------------------- weights


@pytest.mark.parametrize("arch", PRETRAINED)
def test_imagenet_weights_offline_and_not_cached_is_an_error(arch, tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setenv("KERAS_DIGITS_OFFLINE", "1")
    fname = IMAGENET_WEIGHTS[arch][1]
    with pytest.raises(KerasDigitsError) as err:
        build_model(arch, (28, 28, 1), 10, weights="imagenet")
    msg = str(err.value)
    assert fname in msg and str(tmp_path / "models") in msg and "\n" not in msg


def test_imagenet_download_failure_becomes_error(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.delenv("KERAS_DIGITS_OFFLINE", raising=False)

    def no_network(*args, **kwargs):
        raise OSError("URL fetch failure: network is unreachable")

    monkeypatch.setattr(keras.utils, "get_file", no_network)
    with pytest.raises(KerasDigitsError, match="resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"):
        resolve_imagenet_weights("resnet50", IMAGENET_WEIGHTS["resnet50"][1])


def test_imagenet_weights_found_in_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setenv("KERAS_DIGITS_OFFLINE", "1")
    fname = IMAGENET_WEIGHTS["vgg16"][1]
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / fname).write_bytes(b"not really hdf5")
    assert resolve_imagenet_weights("vgg16", fname) == str(tmp_path / "models" / fname)
    # found, but not a weights file: a clear error, not a traceback
    with pytest.raises(KerasDigitsError, match="does not fit"):
        build_model("vgg16", (28, 28, 1), 10, weights="imagenet")


@pytest.mark.parametrize("arch", _maybe_slow(PRETRAINED, SLOW_TRAIN))
def test_weights_path_loads_into_base(arch, tmp_path):
    kwargs = small_kwargs(arch)
    first = build_model(arch, (28, 28, 1), 10, **kwargs)
    path = tmp_path / "base.weights.h5"
    first.get_layer("base").save_weights(path)
    second = build_model(arch, (28, 28, 1), 10, weights=str(path), **kwargs)
    second.get_layer("predictions").set_weights(first.get_layer("predictions").get_weights())
    for head in ("fc",):  # vgg16's hidden dense layer
        if head in {layer.name for layer in first.layers}:
            second.get_layer(head).set_weights(first.get_layer(head).get_weights())
    x, _ = batch()
    np.testing.assert_allclose(np.asarray(second(x, training=False)), np.asarray(first(x, training=False)), atol=1e-6)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_wrong_or_missing_weights_file_is_an_error(tmp_path):
    vgg = build_model("vgg16", (28, 28, 1), 10)
    path = tmp_path / "vgg.weights.h5"
    vgg.get_layer("base").save_weights(path)
    with pytest.raises(KerasDigitsError, match="does not fit"):
        build_model("resnet50", (28, 28, 1), 10, image_size=32, weights=str(path))
    with pytest.raises(KerasDigitsError, match="not found"):
        build_model("resnet50", (28, 28, 1), 10, image_size=32, weights=str(tmp_path / "missing.weights.h5"))
