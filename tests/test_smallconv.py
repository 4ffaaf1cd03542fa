"""smallconv.Conv2D's small-map paths (smallconv) equal keras.layers.Conv2D: values, both gradients, config, saving."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import conv_twins, value_and_grads

from keras_digits.models import smallconv

# (input size, kernel, stride, padding): whole-matmul maps (<= 4x4), weight-gradient-only maps
# (<= 7x7), even kernels (asymmetric SAME padding), VALID, and a map large enough for Keras' own path.
CASES = [
    (4, 3, 1, "same"),
    (7, 3, 2, "same"),
    (7, 1, 2, "same"),
    (7, 3, 1, "same"),
    (4, 2, 1, "same"),
    (6, 3, 1, "valid"),
    (5, 2, 1, "valid"),
    (8, 3, 2, "valid"),
    (14, 3, 1, "same"),
    (4, 1, 1, "same"),
]


@pytest.fixture
def paths_on(monkeypatch):
    """The matrix-product paths in every dtype (they are taken only for bfloat16 on AMX CPUs)."""
    monkeypatch.setattr(smallconv, "matmul_max_area", lambda dtype: smallconv.WGRAD_MAX_AREA)


def _pair(size, k, stride, padding, channels=5, filters=6):
    seed = size * 100 + k * 10 + stride
    return conv_twins(
        smallconv.Conv2D, filters, k, (None, size, size, channels), seed, strides=stride, padding=padding, use_bias=True
    )


@pytest.mark.parametrize("size,k,stride,padding", CASES)
def test_equals_keras_conv(size, k, stride, padding, paths_on):
    ref, new = _pair(size, k, stride, padding)
    x = tf.constant(np.random.default_rng(1).normal(size=(3, size, size, 5)).astype("float32"))
    out = ref.compute_output_shape(x.shape)[1]
    assert new._fast(x) == (stride == 1 and out * out <= smallconv.WGRAD_MAX_AREA)
    y_shape = ref.compute_output_shape(x.shape)
    dy = tf.constant(np.random.default_rng(2).normal(size=(3,) + tuple(y_shape[1:])).astype("float32"))
    for got, want, what in zip(
        value_and_grads(new, x, dy),
        value_and_grads(ref, x, dy),
        ("output", "input gradient", "kernel gradient", "bias gradient"),
    ):
        assert got.shape == want.shape, what
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4, err_msg=what)


@pytest.mark.parametrize("size,k,stride,padding", [c for c in CASES if c[2] > 1])
def test_strided_function_equals_tf(size, k, stride, padding):
    """The layer keeps strided convolutions on TensorFlow's kernels; the function (benchmarks) is right too."""
    rng = np.random.default_rng(7)
    x = tf.constant(rng.normal(size=(2, size, size, 5)).astype("float32"))
    w = tf.constant(rng.normal(size=(k, k, 5, 6)).astype("float32"))
    results = []
    for conv_fn in (
        lambda a, b: smallconv.small_map_conv(a, b, (stride, stride), padding),
        lambda a, b: tf.nn.conv2d(a, b, stride, padding.upper()),
    ):
        with tf.GradientTape() as tape:
            tape.watch([x, w])
            y = conv_fn(x, w)
            loss = tf.reduce_sum(y * tf.cos(y))
        results.append([y.numpy()] + [g.numpy() for g in tape.gradient(loss, [x, w])])
    for got, want in zip(*results):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_paths_taken_by_map_size(paths_on):
    x4 = keras.KerasTensor((None, 4, 4, 8))
    assert smallconv.Conv2D(4, 3, padding="same")._fast(x4)
    assert smallconv.Conv2D(4, 3, padding="same")._fast(keras.KerasTensor((None, 7, 7, 8)))
    assert not smallconv.Conv2D(4, 3, strides=2, padding="same")._fast(keras.KerasTensor((None, 7, 7, 8)))
    assert not smallconv.Conv2D(4, 3, padding="same")._fast(keras.KerasTensor((None, 14, 14, 8)))
    assert not smallconv.Conv2D(4, 3, padding="same", dilation_rate=2)._fast(x4)
    assert not smallconv.Conv2D(4, 3, padding="same", groups=2)._fast(x4)
    assert not smallconv.Conv2D(4, 3, padding="same")._fast(keras.KerasTensor((None, None, None, 8)))


def test_matmul_path_used_under_a_mixed_policy(monkeypatch, paths_on):
    calls = []
    real = smallconv.small_map_conv
    monkeypatch.setattr(smallconv, "small_map_conv", lambda *a: calls.append(a) or real(*a))
    ref, new = _pair(4, 3, 1, "same")
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        ref_b = keras.layers.Conv2D(6, 3, padding="same")
        new_b = smallconv.Conv2D(6, 3, padding="same")
        for layer in (ref_b, new_b):
            layer.build((None, 4, 4, 5))
            layer.set_weights(new.get_weights())
        x = tf.constant(np.random.default_rng(3).normal(size=(2, 4, 4, 5)).astype("float32"))
        got, want = new_b(x), ref_b(x)
    finally:
        keras.config.set_dtype_policy("float32")
    assert calls and got.dtype == want.dtype == tf.bfloat16
    np.testing.assert_allclose(tf.cast(got, tf.float32), tf.cast(want, tf.float32), rtol=0.05, atol=0.1)


def test_only_where_measured_to_pay(monkeypatch):
    monkeypatch.setattr(smallconv, "_amx_cpu_only", lambda: True)
    monkeypatch.setattr(smallconv, "_avx2_kernels_only", lambda: False)
    assert smallconv.matmul_max_area("bfloat16") == smallconv.WGRAD_MAX_AREA
    assert not smallconv.matmul_max_area("float32") and not smallconv.matmul_max_area("float16")
    monkeypatch.setattr(smallconv, "_amx_cpu_only", lambda: False)
    assert not smallconv.matmul_max_area("bfloat16")
    monkeypatch.setattr(smallconv, "_avx2_kernels_only", lambda: True)  # float32, 4x4 maps only
    assert smallconv.matmul_max_area("float32") == smallconv.MATMUL_MAX_AREA
    assert not smallconv.matmul_max_area("bfloat16") and not smallconv.matmul_max_area("float16")
    assert smallconv.Conv2D(4, 3, padding="same")._fast(keras.KerasTensor((None, 4, 4, 8)))
    assert not smallconv.Conv2D(4, 3, padding="same")._fast(keras.KerasTensor((None, 7, 7, 8)))
    monkeypatch.setattr(smallconv, "_avx2_kernels_only", lambda: False)
    assert not smallconv.Conv2D(4, 3, padding="same")._fast(keras.KerasTensor((None, 4, 4, 8)))


def test_amx_read_from_the_cpu(monkeypatch):
    from keras_digits.runtime import precision

    for flags, isa, gpus, want in [
        ({"amx_bf16"}, "", (), True),
        ({"avx512_bf16"}, "", (), False),
        ({"amx_bf16"}, "AVX512_CORE_BF16", (), False),
        ({"amx_bf16"}, "AVX512_CORE_AMX", (), True),
        ({"amx_bf16"}, "", ((8, 0),), False),
    ]:
        smallconv._amx_cpu_only.cache_clear()
        monkeypatch.setattr(precision, "cpu_flags", lambda f=flags: frozenset(f))
        monkeypatch.setattr(precision, "gpu_capabilities", lambda g=gpus: g)
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", isa)
        assert smallconv._amx_cpu_only() is want, (flags, isa, gpus)
    smallconv._amx_cpu_only.cache_clear()


def test_avx2_kernels_read_from_the_cpu_and_the_cap(monkeypatch):
    from keras_digits.runtime import precision

    for flags, isa, gpus, onednn, want in [
        ({"avx2"}, "", (), "", True),
        ({"avx2", "avx512f"}, "", (), "", False),
        ({"avx2", "avx512f"}, "AVX2", (), "", True),
        ({"avx2", "avx512f", "amx_bf16"}, "AVX2", (), "", True),
        ({"avx2"}, "", ((8, 0),), "", False),
        ({"avx2"}, "", (), "0", False),
    ]:
        smallconv._avx2_kernels_only.cache_clear()
        monkeypatch.setattr(precision, "cpu_flags", lambda f=flags: frozenset(f))
        monkeypatch.setattr(precision, "gpu_capabilities", lambda g=gpus: g)
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", isa)
        monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", onednn)
        assert smallconv._avx2_kernels_only() is want, (flags, isa, gpus, onednn)
    smallconv._avx2_kernels_only.cache_clear()


def test_saved_and_loaded(tmp_path):
    inputs = keras.Input((4, 4, 3))
    model = keras.Model(inputs, smallconv.Conv2D(2, 3, padding="same", name="c")(inputs))
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.models.load_model(path, compile=False)
    assert type(loaded.get_layer("c")) is smallconv.Conv2D
    x = np.random.default_rng(4).normal(size=(2, 4, 4, 3)).astype("float32")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6)


def _resnet_grads(x, y, width=8):
    from keras_digits.models import build_model

    keras.utils.set_random_seed(0)
    model = build_model("resnet18", (28, 28, 3), 4, width=width)
    with tf.GradientTape() as tape:
        loss = keras.losses.sparse_categorical_crossentropy(y, model(x, training=True))
    return model, [g.numpy() for g in tape.gradient(loss, model.trainable_weights)]


def test_resnet18_gradients_unchanged(monkeypatch):
    """The stride-1 convs of the 7x7 and 4x4 stages through the paths: the whole model's gradients unchanged."""
    x = tf.constant(np.random.default_rng(5).uniform(0, 255, size=(4, 28, 28, 3)).astype("float32"))
    y = tf.constant([0, 1, 2, 3])
    calls = []
    real = smallconv.small_map_conv
    monkeypatch.setattr(smallconv, "small_map_conv", lambda *a: calls.append(a[0].shape) or real(*a))
    monkeypatch.setattr(smallconv, "matmul_max_area", lambda dtype: 0)
    _, plain = _resnet_grads(x, y)
    assert not calls  # the paths off: Keras' own convolutions
    monkeypatch.setattr(smallconv, "matmul_max_area", lambda dtype: smallconv.WGRAD_MAX_AREA)
    model, fast = _resnet_grads(x, y)
    assert sorted({tuple(s[1:3]) for s in calls}) == [(4, 4), (7, 7)]  # the stride-1 convs of stages 3 and 4
    assert any(isinstance(layer, smallconv.Conv2D) for layer in model.layers)
    for a, b in zip(fast, plain):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)


def test_resnet18_exports_with_the_paths(monkeypatch, tmp_path):
    from keras_digits.serving.export import export_model

    monkeypatch.setattr(smallconv, "matmul_max_area", lambda dtype: smallconv.WGRAD_MAX_AREA)
    x = np.random.default_rng(6).uniform(0, 255, size=(2, 28, 28, 3)).astype("float32")
    model, _ = _resnet_grads(tf.constant(x), tf.constant([0, 1]))
    out = export_model(model, tmp_path / "1", [str(i) for i in range(4)])
    served = tf.saved_model.load(str(out)).signatures["serving_default"]
    got = served(tf.constant(x.astype("uint8")))["probabilities"].numpy()
    want = model.predict(x.astype("uint8").astype("float32"), verbose=0)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_mixed_bfloat16_gradients_close(monkeypatch):
    """Under mixed_bfloat16, the only setting that takes the paths in practice: float32 kernel gradients,
    close to Keras' own computation at bfloat16's precision."""
    x = tf.constant(np.random.default_rng(8).uniform(0, 255, size=(4, 28, 28, 3)).astype("float32"))
    y = tf.constant([0, 1, 2, 3])
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        monkeypatch.setattr(smallconv, "matmul_max_area", lambda dtype: 0)
        _, plain = _resnet_grads(x, y)
        monkeypatch.setattr(smallconv, "matmul_max_area", lambda dtype: smallconv.WGRAD_MAX_AREA)
        _, fast = _resnet_grads(x, y)
    finally:
        keras.config.set_dtype_policy("float32")
    for a, b in zip(fast, plain):
        assert a.dtype == b.dtype == np.float32
        scale = float(np.abs(b).max()) or 1.0
        assert float(np.abs(a - b).max()) <= 0.05 * scale


def test_weights_files_shared_with_keras_conv2d(tmp_path):
    """Weights files and BackupAndRestore backups name entries after the layer class: models built
    with Keras' Conv2D (runs backed up before this layer) load into these models, and back."""

    def build(conv):
        inputs = keras.Input((4, 4, 3))
        h = conv(4, 3, padding="same", name="a")(inputs)
        return keras.Model(inputs, conv(2, 1, name="b")(h))

    old, new = build(keras.layers.Conv2D), build(smallconv.Conv2D)
    old.save_weights(tmp_path / "old.weights.h5")
    new.load_weights(tmp_path / "old.weights.h5")
    for a, b in zip(new.get_weights(), old.get_weights()):
        np.testing.assert_array_equal(a, b)
    new.save_weights(tmp_path / "new.weights.h5")
    back = build(keras.layers.Conv2D)
    back.load_weights(tmp_path / "new.weights.h5")
    for a, b in zip(back.get_weights(), old.get_weights()):
        np.testing.assert_array_equal(a, b)
