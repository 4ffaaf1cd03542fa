"""AlexNet (Krizhevsky, Sutskever & Hinton 2012), single tower, no local response normalisation.

Five conv layers (96 11x11, 256 5x5, 384 3x3, 384 3x3, 256 3x3) with overlapping 3x3/2 max-pools after
conv1, conv2 and conv5, then Dense 4096 -> Dropout 0.5 -> Dense 4096 -> Dropout 0.5 -> softmax.

Small-image adaptation (say so when reporting): the original stem, Conv 11x11 stride 4 'valid', is used
only when the working resolution ``image_size >= 128``; below that conv1 is 5x5 stride 2 'same' so small
images keep enough resolution to be trained. Conv2-conv5 use 'same' padding, pools are 'valid'.

Sizes: default working size 64 px (64 -> 32 -> pool 15 -> pool 7 -> pool 3: a 3x3x256 map into the
dense layers); minimum 29 px, the smallest that leaves a 1x1 map after the third pool
(29 -> 15 -> 7 -> 3 -> 1). ``batch_norm=True`` inserts BatchNormalization after every one of the five
convs (before its ReLU; those convs then drop their bias); the dense layers keep dropout only.
``width`` multiplies every conv's filters and the dense units (0.25 gives a small test model).
"""

from __future__ import annotations

import keras
from keras import layers

from keras_digits.models.batchnorm import fused_bn
from keras_digits.models.common import adapt_input, model_inputs
from keras_digits.models.conv import Conv2D
from keras_digits.models.registry import register_model

ORIGINAL_STEM_FROM = 128  # image_size >= 128 -> 11x11 stride-4 stem; else 5x5 stride-2


def apply_alex_conv(
    x, filters: int, kernel: int, *, strides: int = 1, padding: str = "same", batch_norm: bool, name: str
):
    """Conv -> [BatchNorm] -> ReLU."""
    x = Conv2D(filters, kernel, strides=strides, padding=padding, use_bias=not batch_norm, name=f"{name}_conv")(x)
    if batch_norm:
        x = fused_bn(name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


@register_model(
    "alexnet",
    description="AlexNet: 5 conv + 3 dense, dropout .5 (5x5/2 stem below 128 px); optional BN",
    default_size=64,
    min_size=29,
)
def alexnet(input_shape, num_classes, *, image_size=64, width=1.0, batch_norm=False, dropout=0.5, dense_units=4096):
    size = int(image_size or input_shape[0])
    inputs = model_inputs(input_shape)
    x = adapt_input(inputs, image_size=image_size)

    def f(n: int) -> int:
        return max(1, int(round(n * float(width))))

    if size >= ORIGINAL_STEM_FROM:
        x = apply_alex_conv(x, f(96), 11, strides=4, padding="valid", batch_norm=batch_norm, name="conv1")
    else:
        x = apply_alex_conv(x, f(96), 5, strides=2, padding="same", batch_norm=batch_norm, name="conv1")
    x = layers.MaxPooling2D(3, strides=2, name="pool1")(x)
    x = apply_alex_conv(x, f(256), 5, batch_norm=batch_norm, name="conv2")
    x = layers.MaxPooling2D(3, strides=2, name="pool2")(x)
    x = apply_alex_conv(x, f(384), 3, batch_norm=batch_norm, name="conv3")
    x = apply_alex_conv(x, f(384), 3, batch_norm=batch_norm, name="conv4")
    x = apply_alex_conv(x, f(256), 3, batch_norm=batch_norm, name="conv5")
    x = layers.MaxPooling2D(3, strides=2, name="pool5")(x)
    x = layers.Flatten(name="flatten")(x)
    for i in (6, 7):
        x = layers.Dense(f(int(dense_units)), activation="relu", name=f"fc{i}")(x)
        if dropout:
            x = layers.Dropout(float(dropout), name=f"fc{i}_drop")(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name="alexnet")


# ---------------------------------------------------------------------------- KerasTuner search space
from keras_digits.models.registry import register_search_space  # noqa: E402


@register_search_space("alexnet")
def alexnet_space(hp):
    """Width, BN, dropout and dense size; defaults are the builder's."""
    return {
        "width": hp.Choice("width", [0.25, 0.5, 1.0], default=1.0),
        "batch_norm": hp.Boolean("batch_norm", default=False),
        "dropout": hp.Choice("dropout", [0.0, 0.25, 0.5], default=0.5),
        "dense_units": hp.Choice("dense_units", [512, 1024, 2048, 4096], default=4096),
    }
