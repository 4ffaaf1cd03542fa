"""conv.Conv2D's bias gradient as a plain reduction equals keras.layers.Conv2D, and is taken only where it paid."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import conv_twins, value_and_grads

from keras_digits.models import conv


def _pair(filters=6, k=3, channels=4, size=9, **kwargs):
    return conv_twins(conv.Conv2D, filters, k, (None, size, size, channels), filters * 10 + k, padding="same", **kwargs)


@pytest.mark.parametrize("kwargs", [{}, {"activation": "relu"}, {"strides": 2}, {"use_bias": False}])
def test_equals_keras_conv(kwargs, monkeypatch):
    calls = []
    real = conv.add_bias
    monkeypatch.setattr(conv, "add_bias", lambda *a: calls.append(1) or real(*a))
    monkeypatch.setattr(conv, "reduced_bias_grad_pays", lambda dtype: True)
    ref, new = _pair(**kwargs)
    x = tf.constant(np.random.default_rng(1).normal(size=(3, 9, 9, 4)).astype("float32"))
    dy = tf.constant(np.random.default_rng(2).normal(size=ref(x).shape).astype("float32"))
    want, got = value_and_grads(ref, x, dy), value_and_grads(new, x, dy)
    assert bool(calls) == kwargs.get("use_bias", True)
    assert len(got) == len(want) == (4 if kwargs.get("use_bias", True) else 3)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)


def test_trains_inside_a_compiled_model(monkeypatch):
    """Through fit's traced step (the graph the oneDNN pass rewrites), the same weights as Keras' layer."""
    monkeypatch.setattr(conv, "reduced_bias_grad_pays", lambda dtype: True)
    x = np.random.default_rng(3).normal(size=(16, 8, 8, 2)).astype("float32")
    y = np.random.default_rng(4).normal(size=(16, 8, 8, 3)).astype("float32")
    weights = []
    for cls in (keras.layers.Conv2D, conv.Conv2D):
        keras.utils.set_random_seed(0)
        inputs = keras.Input((8, 8, 2))
        model = keras.Model(inputs, cls(3, 3, padding="same", bias_initializer="ones")(inputs))
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
        model.fit(x, y, batch_size=8, epochs=2, verbose=0, shuffle=False)
        weights.append(model.get_weights())
    for a, b in zip(*weights, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_only_where_measured_to_pay(monkeypatch):
    monkeypatch.setattr(conv, "_x86_onednn_cpu", lambda: True)
    assert conv.reduced_bias_grad_pays("float32")
    assert not conv.reduced_bias_grad_pays("bfloat16") and not conv.reduced_bias_grad_pays("float16")
    monkeypatch.setattr(conv, "_x86_onednn_cpu", lambda: False)
    assert not conv.reduced_bias_grad_pays("float32")
    layer = conv.Conv2D(2, 3)
    layer.build((None, 5, 5, 1))
    assert not layer._reduced_bias()


def test_mixed_policy_keeps_keras_computation(monkeypatch):
    calls = []
    monkeypatch.setattr(conv, "add_bias", lambda *a: calls.append(1))
    monkeypatch.setattr(conv, "_x86_onednn_cpu", lambda: True)
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        layer = conv.Conv2D(2, 3)
        out = layer(tf.zeros((1, 5, 5, 1)))
    finally:
        keras.config.set_dtype_policy("float32")
    assert out.dtype == tf.bfloat16 and not calls


def test_saved_and_loaded(tmp_path):
    inputs = keras.Input((6, 6, 2))
    model = keras.Model(inputs, conv.Conv2D(3, 3, padding="same", name="c")(inputs))
    model.get_layer("c").bias.assign([0.5, -1.0, 2.0])
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.models.load_model(path, compile=False)
    assert type(loaded.get_layer("c")) is conv.Conv2D
    x = np.random.default_rng(5).normal(size=(2, 6, 6, 2)).astype("float32")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6)
