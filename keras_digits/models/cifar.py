"""CIFAR-10 models: the TBMI26 lab's small CNN and a ResNet-20-style residual net.

cifar_cnn: two blocks of [Conv 3x3 same -> (BN) -> ReLU] x 2 + MaxPool 2x2, filters (16, 32), then
Flatten -> softmax. At (32, 32, 3) with 10 classes it has exactly 37,146 parameters (convs 448 + 2,320 +
4,640 + 9,248, dense 2,048*10+10 = 20,490); ``batch_norm=True`` adds 384 (192 trainable) for 37,530;
``dropout=True`` adds Dropout 0.25 after each block and 0.5 before the classifier (no parameters).

resnet_cifar: He et al. 2016's CIFAR ResNet (6n+2 layers, n = ``depth`` basic blocks per stage, default
3 = ResNet-20): Conv 3x3 stem, three stages of widths ``width`` x (1, 2, 4) with strides (1, 2, 2),
1x1-conv projection shortcuts, global average pool, softmax. Default ``width=32`` (twice the paper's
16: about 1.1M parameters) to clear 75% CIFAR-10 test accuracy within 25 epochs with margin.
"""

from __future__ import annotations

import keras
from keras import layers

from keras_digits.models.batchnorm import fused_bn
from keras_digits.models.common import adapt_input, model_inputs
from keras_digits.models.conv import Conv2D
from keras_digits.models.registry import register_model
from keras_digits.models.resnet import apply_basic_block


def apply_cifar_block(x, filters: int, *, convs: int, batch_norm: bool, dropout: float, name: str):
    """[Conv 3x3 same -> (BN) -> ReLU] x convs -> MaxPool 2 -> (Dropout)."""
    for i in range(convs):
        x = Conv2D(filters, 3, padding="same", name=f"{name}_conv{i + 1}")(x)
        if batch_norm:
            x = fused_bn(name=f"{name}_bn{i + 1}")(x)
        x = layers.ReLU(name=f"{name}_relu{i + 1}")(x)
    x = layers.MaxPooling2D(2, name=f"{name}_pool")(x)
    if dropout:
        x = layers.Dropout(dropout, name=f"{name}_drop")(x)
    return x


@register_model(
    "cifar_cnn",
    description="TBMI26 lab CIFAR-10 CNN: 2x (2 Conv 3x3 + MaxPool), filters 16/32; ~37k params",
    default_size=None,
    min_size=4,
)
def cifar_cnn(
    input_shape, num_classes, *, image_size=None, filters=(16, 32), convs_per_block=2, batch_norm=False, dropout=False
):
    inputs = model_inputs(input_shape)
    x = adapt_input(inputs, image_size=image_size)
    for i, f in enumerate(filters):
        x = apply_cifar_block(
            x,
            int(f),
            convs=int(convs_per_block),
            batch_norm=batch_norm,
            dropout=0.25 if dropout else 0.0,
            name=f"block{i + 1}",
        )
    x = layers.Flatten(name="flatten")(x)
    if dropout:
        x = layers.Dropout(0.5, name="head_drop")(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name="cifar_cnn")


@register_model(
    "resnet_cifar",
    description="ResNet-20-style CIFAR net (3 stages x depth basic blocks, widths 32/64/128)",
    default_size=None,
    min_size=4,
)
def resnet_cifar(input_shape, num_classes, *, image_size=None, width=32, depth=3):
    inputs = model_inputs(input_shape)
    x = adapt_input(inputs, image_size=image_size)
    width = int(width)
    x = Conv2D(width, 3, padding="same", use_bias=False, kernel_initializer="he_normal", name="stem_conv")(x)
    x = fused_bn(name="stem_bn")(x)
    x = layers.ReLU(name="stem_relu")(x)
    for s in range(3):
        for b in range(int(depth)):
            stride = 2 if (s > 0 and b == 0) else 1
            x = apply_basic_block(x, width * 2**s, stride=stride, name=f"stage{s + 1}_block{b + 1}")
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name="resnet_cifar")


# ---------------------------------------------------------------------------- KerasTuner search spaces
from keras_digits.models.registry import register_search_space  # noqa: E402


@register_search_space("cifar_cnn")
def cifar_cnn_space(hp):
    base = hp.Choice("base_filters", [16, 32, 64], default=16)
    return {
        "filters": (base, 2 * base),
        "convs_per_block": hp.Choice("convs_per_block", [1, 2, 3], default=2),
        "batch_norm": hp.Boolean("batch_norm", default=False),
        "dropout": hp.Boolean("dropout", default=False),
    }


@register_search_space("resnet_cifar")
def resnet_cifar_space(hp):
    return {"width": hp.Choice("width", [16, 32, 64], default=32), "depth": hp.Choice("depth", [2, 3, 5], default=3)}
