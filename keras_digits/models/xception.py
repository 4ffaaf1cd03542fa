"""Xception (keras.applications) base + softmax head.

The base is ``keras.applications.Xception(include_top=False, pooling="avg")`` named "base"; inputs are
converted to RGB, resized to ``image_size`` and scaled to [-1, 1] (Xception's "tf" preprocessing) by
layers inside the model. Keras's minimum input is 71 px; the default working size is also 71 px so
the model stays quick to build and train on CPU (the reports used 168 px: pass ``--image-size 168``).
"""

from __future__ import annotations

import functools

import keras

from keras_digits.models.pretrained import build_pretrained_model
from keras_digits.models.registry import register_model


@register_model(
    "xception",
    description="keras.applications Xception base (avg pool) + softmax; inputs scaled to [-1, 1]",
    default_size=71,
    min_size=71,
    channels=3,
    pretrained=True,
)
def xception(input_shape, num_classes, *, image_size=71, weights=None, freeze_base=False):
    return build_pretrained_model(
        input_shape,
        num_classes,
        app_name="xception",
        base_fn=functools.partial(keras.applications.Xception, pooling="avg"),
        image_size=int(image_size or 71),
        preprocess="tf",
        weights=weights,
        freeze_base=freeze_base,
        name="xception",
    )
