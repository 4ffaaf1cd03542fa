"""VGG16 (keras.applications) base + the Keras team's head.

``keras.applications.VGG16(include_top=False)`` named "base" (no pooling) -> Flatten -> Dense 256 ReLU
-> Dense softmax. Caffe preprocessing (RGB->BGR, minus ImageNet mean) is done by a layer in the model.
Minimum and default working size 32 px (five 2x2 pools leave a 1x1x512 map; 48 px would leave the same
1x1 map at twice the cost). The base is frozen by default only when it loads weights (ImageNet or a
file: transfer learning, only the head trains); with random weights (``weights=None``, the offline
default) a frozen base would leave the head to learn from random features (0.82 test on the digits),
so the whole network trains, and its convolutions start He-normal: VGG16 has no BatchNorm, and from
keras.applications' Glorot-uniform its 13 ReLU layers shrink the signal until Adam at 1e-3 never leaves
chance (0.10 test on the digits). ``--model-kwargs '{"freeze_base": false}'`` trains a loaded base too.
"""

from __future__ import annotations

import keras
from keras import layers

from keras_digits.models.pretrained import build_pretrained_model
from keras_digits.models.registry import register_model


def apply_vgg_head(x, units: int = 256, dropout: float = 0.0):
    """Flatten -> Dense(units, relu) [-> Dropout]."""
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(int(units), activation="relu", name="fc")(x)
    if dropout:
        x = layers.Dropout(dropout, name="fc_drop")(x)
    return x


@register_model(
    "vgg16",
    description="keras.applications VGG16 base (frozen when it loads weights) + Flatten + Dense 256 + softmax",
    default_size=32,
    min_size=32,
    channels=3,
    pretrained=True,
)
def vgg16(input_shape, num_classes, *, image_size=32, weights=None, freeze_base=None, dense_units=256, dropout=0.0):
    if freeze_base is None:  # frozen for transfer learning, trained from random weights
        freeze_base = weights not in (None, "", "none", "random")
    return build_pretrained_model(
        input_shape,
        num_classes,
        app_name="vgg16",
        base_fn=keras.applications.VGG16,
        image_size=int(image_size or 32),
        preprocess="caffe",
        weights=weights,
        freeze_base=freeze_base,
        head=lambda x: apply_vgg_head(x, dense_units, dropout),
        name="vgg16",
        he_init=True,
    )


# ---------------------------------------------------------------------------- KerasTuner search space
from keras_digits.models.registry import register_search_space  # noqa: E402


@register_search_space("vgg16")
def vgg16_space(hp):
    return {
        "dense_units": hp.Choice("dense_units", [128, 256, 512], default=256),
        "dropout": hp.Choice("dropout", [0.0, 0.25, 0.5], default=0.0),
    }
