"""The reports' small models: simple_cnn_v1, simple_cnn (v2), keras_cnn and the dense baseline."""

from __future__ import annotations

import keras
from keras import layers

from keras_digits.models.batchnorm import fused_bn
from keras_digits.models.common import adapt_input, model_inputs
from keras_digits.models.conv import Conv2D
from keras_digits.models.registry import register_model


def apply_conv_block(x, filters: int, *, batch_norm: bool, dropout: float, name: str):
    """Conv2D 3x3 same -> [BatchNorm] -> ReLU -> MaxPool 2 -> [Dropout]."""
    x = Conv2D(filters, 3, padding="same", name=f"{name}_conv")(x)
    if batch_norm:
        x = fused_bn(name=f"{name}_bn")(x)
    x = layers.ReLU(name=f"{name}_relu")(x)
    x = layers.MaxPooling2D(2, name=f"{name}_pool")(x)
    if dropout:
        x = layers.Dropout(dropout, name=f"{name}_drop")(x)
    return x


@register_model("simple_cnn_v1", description="2x (Conv 3x3 + LeakyReLU 0.01 + MaxPool) + Dense: the first report's CNN")
def simple_cnn_v1(input_shape, num_classes, *, image_size=None, filters=(32, 64)):
    inputs = model_inputs(input_shape)
    x = adapt_input(inputs, image_size=image_size)
    for i, f in enumerate(filters):
        x = Conv2D(f, 3, padding="same", name=f"block{i + 1}_conv")(x)
        x = layers.LeakyReLU(negative_slope=0.01, name=f"block{i + 1}_lrelu")(x)
        x = layers.MaxPooling2D(2, name=f"block{i + 1}_pool")(x)
    x = layers.Flatten(name="flatten")(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name="simple_cnn_v1")


@register_model(
    "simple_cnn", description="3x (Conv 3x3 + BN + ReLU + MaxPool + Dropout .25) + Dense 256 + BN + Dropout .5"
)
def simple_cnn(
    input_shape,
    num_classes,
    *,
    image_size=None,
    filters=(32, 64, 128),
    dense_units=256,
    batch_norm=True,
    dropout=True,
    conv_dropout=0.25,
    dense_dropout=0.5,
):
    inputs = model_inputs(input_shape)
    x = adapt_input(inputs, image_size=image_size)
    for i, f in enumerate(filters):
        x = apply_conv_block(
            x, int(f), batch_norm=batch_norm, dropout=conv_dropout if dropout else 0.0, name=f"block{i + 1}"
        )
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(int(dense_units), name="fc")(x)
    if batch_norm:
        x = fused_bn(name="fc_bn")(x)
    x = layers.ReLU(name="fc_relu")(x)
    if dropout and dense_dropout:
        x = layers.Dropout(dense_dropout, name="fc_drop")(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name="simple_cnn")


@register_model("keras_cnn", description="Conv 28 3x3 + MaxPool + Dense 128 + Dropout .2: the Keras team's first model")
def keras_cnn(input_shape, num_classes, *, image_size=None, filters=28, dense_units=128, dropout=0.2):
    inputs = model_inputs(input_shape)
    x = adapt_input(inputs, image_size=image_size)
    x = Conv2D(int(filters), 3, name="conv")(x)
    x = layers.MaxPooling2D(2, name="pool")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(int(dense_units), activation="relu", name="fc")(x)
    if dropout:
        x = layers.Dropout(dropout, name="fc_drop")(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name="keras_cnn")


@register_model("dense", description="Flatten + two Dense ReLU layers: the fully connected baseline")
def dense(input_shape, num_classes, *, image_size=None, units=(128, 64), dropout=0.0):
    inputs = model_inputs(input_shape)
    x = adapt_input(inputs, image_size=image_size)
    x = layers.Flatten(name="flatten")(x)
    for i, u in enumerate(units):
        x = layers.Dense(int(u), activation="relu", name=f"fc{i + 1}")(x)
        if dropout:
            x = layers.Dropout(dropout, name=f"fc{i + 1}_drop")(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name="dense")


# ---------------------------------------------------------------------------- KerasTuner search spaces
# Each maps a keras_tuner.HyperParameters onto this family's builder keyword arguments. With a fresh
# HyperParameters every value is its default, and the defaults are the builder's own defaults (the
# registered model; tests/test_tune.py checks it). keras_digits.tune adds the fit-time choices.
from keras_digits.models.registry import register_search_space  # noqa: E402


@register_search_space("simple_cnn_v1")
def simple_cnn_v1_space(hp):
    base = hp.Choice("base_filters", [16, 32, 64], default=32)
    return {"filters": (base, 2 * base)}


@register_search_space("simple_cnn")
def simple_cnn_space(hp):
    base = hp.Choice("base_filters", [16, 32, 64], default=32)
    blocks = hp.Choice("conv_blocks", [2, 3], default=3)
    return {
        "filters": tuple(base * 2**i for i in range(blocks)),
        "dense_units": hp.Choice("dense_units", [128, 256, 512], default=256),
        "batch_norm": hp.Boolean("batch_norm", default=True),
        "conv_dropout": hp.Choice("conv_dropout", [0.0, 0.1, 0.25, 0.4], default=0.25),
        "dense_dropout": hp.Choice("dense_dropout", [0.0, 0.25, 0.5], default=0.5),
    }


@register_search_space("keras_cnn")
def keras_cnn_space(hp):
    return {
        "filters": hp.Choice("filters", [16, 28, 32, 64], default=28),
        "dense_units": hp.Choice("dense_units", [64, 128, 256], default=128),
        "dropout": hp.Choice("dropout", [0.0, 0.2, 0.4], default=0.2),
    }


@register_search_space("dense")
def dense_space(hp):
    return {
        "units": (
            hp.Choice("units1", [64, 128, 256, 512], default=128),
            hp.Choice("units2", [32, 64, 128], default=64),
        ),
        "dropout": hp.Choice("dropout", [0.0, 0.2, 0.4], default=0.0),
    }
