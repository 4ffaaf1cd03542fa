"""ResNets: hand-written basic-block ResNet-18/34 and keras.applications ResNet-50/101/152.

resnet18 / resnet34 (He et al. 2016, basic blocks, stage sizes (2, 2, 2, 2) / (3, 4, 6, 3), filters
width x (1, 2, 4, 8), 1x1-conv + BN projection shortcuts where the shape changes). Stem rule, on the
working resolution ``image_size``:

* ``image_size < 64``: small-image stem, Conv 3x3 stride 1 + BN + ReLU and NO max-pool (as MedMNIST's
  ResNet-18 at 28 px and the usual CIFAR variants), so a 28 px input reaches the last stage at 4x4;
* ``image_size >= 64``: the ImageNet stem, Conv 7x7 stride 2 + BN + ReLU + MaxPool 3x3 stride 2.

resnet50 / resnet101 / resnet152: keras.applications bases (include_top=False, pooling="avg", layer
named "base") + Dense softmax, caffe preprocessing done by layers in the model (RGB->BGR, minus ImageNet
mean), `weights` None | "imagenet" | path, `freeze_base`. Default working size 64 px, minimum 32 (Keras's).
"""

from __future__ import annotations

import functools

import keras
from keras import layers

from keras_digits.models import smallconv
from keras_digits.models.batchnorm import fused_bn
from keras_digits.models.common import adapt_input, model_inputs
from keras_digits.models.pretrained import build_pretrained_model
from keras_digits.models.registry import register_model

SMALL_STEM_BELOW = 64  # image_size < 64 -> 3x3 stride-1 stem without max-pool


def apply_basic_block(x, filters: int, *, stride: int = 1, name: str):
    """Two 3x3 conv + BN (+ ReLU) with an identity or 1x1-conv projection shortcut, then ReLU."""
    shortcut = x
    if stride != 1 or x.shape[-1] != filters:
        shortcut = smallconv.Conv2D(
            filters, 1, strides=stride, use_bias=False, kernel_initializer="he_normal", name=f"{name}_proj_conv"
        )(x)
        shortcut = fused_bn(name=f"{name}_proj_bn")(shortcut)
    y = smallconv.Conv2D(
        filters, 3, strides=stride, padding="same", use_bias=False, kernel_initializer="he_normal", name=f"{name}_conv1"
    )(x)
    y = fused_bn(name=f"{name}_bn1")(y)
    y = layers.ReLU(name=f"{name}_relu1")(y)
    y = smallconv.Conv2D(
        filters, 3, padding="same", use_bias=False, kernel_initializer="he_normal", name=f"{name}_conv2"
    )(y)
    y = fused_bn(name=f"{name}_bn2")(y)
    y = layers.Add(name=f"{name}_add")([shortcut, y])
    return layers.ReLU(name=f"{name}_out")(y)


def apply_stem(x, filters: int, *, small: bool):
    """Small-image stem (3x3/1, no pool) or ImageNet stem (7x7/2 + maxpool 3x3/2)."""
    if small:
        x = smallconv.Conv2D(
            filters, 3, padding="same", use_bias=False, kernel_initializer="he_normal", name="stem_conv"
        )(x)
    else:
        x = smallconv.Conv2D(
            filters, 7, strides=2, padding="same", use_bias=False, kernel_initializer="he_normal", name="stem_conv"
        )(x)
    x = fused_bn(name="stem_bn")(x)
    x = layers.ReLU(name="stem_relu")(x)
    if not small:
        x = layers.MaxPooling2D(3, strides=2, padding="same", name="stem_pool")(x)
    return x


def basic_resnet(input_shape, num_classes, *, stage_sizes, image_size=None, width=64, name="resnet"):
    """Basic-block ResNet; `width` = filters of the first stage (doubling per stage)."""
    inputs = model_inputs(input_shape)
    x = adapt_input(inputs, image_size=image_size)
    size = int(image_size or input_shape[0])
    width = int(width)
    x = apply_stem(x, width, small=size < SMALL_STEM_BELOW)
    for s, blocks in enumerate(stage_sizes):
        filters = width * 2**s
        for b in range(blocks):
            stride = 2 if (s > 0 and b == 0) else 1
            x = apply_basic_block(x, filters, stride=stride, name=f"stage{s + 1}_block{b + 1}")
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name=name)


@register_model(
    "resnet18",
    description="ResNet-18, basic blocks (2,2,2,2); 3x3/1 stem without max-pool below 64 px",
    default_size=None,
    min_size=8,
)
def resnet18(input_shape, num_classes, *, image_size=None, width=64):
    """ResNet-18 (basic blocks, stages 2-2-2-2). Stem: image_size < 64 -> 3x3 stride 1, no pool; else 7x7/2 + pool."""
    return basic_resnet(
        input_shape, num_classes, stage_sizes=(2, 2, 2, 2), image_size=image_size, width=width, name="resnet18"
    )


@register_model(
    "resnet34",
    description="ResNet-34, basic blocks (3,4,6,3); 3x3/1 stem without max-pool below 64 px",
    default_size=None,
    min_size=8,
)
def resnet34(input_shape, num_classes, *, image_size=None, width=64):
    """ResNet-34 (basic blocks, stages 3-4-6-3). Stem: image_size < 64 -> 3x3 stride 1, no pool; else 7x7/2 + pool."""
    return basic_resnet(
        input_shape, num_classes, stage_sizes=(3, 4, 6, 3), image_size=image_size, width=width, name="resnet34"
    )


def _applications_resnet(app_name, app_fn, input_shape, num_classes, *, image_size, weights, freeze_base):
    return build_pretrained_model(
        input_shape,
        num_classes,
        app_name=app_name,
        base_fn=functools.partial(app_fn, pooling="avg"),
        image_size=int(image_size or 64),
        preprocess="caffe",
        weights=weights,
        freeze_base=freeze_base,
        name=app_name,
    )


@register_model(
    "resnet50",
    description="keras.applications ResNet50 base (avg pool) + softmax; caffe preprocessing",
    default_size=64,
    min_size=32,
    channels=3,
    pretrained=True,
)
def resnet50(input_shape, num_classes, *, image_size=64, weights=None, freeze_base=False):
    return _applications_resnet(
        "resnet50",
        keras.applications.ResNet50,
        input_shape,
        num_classes,
        image_size=image_size,
        weights=weights,
        freeze_base=freeze_base,
    )


@register_model(
    "resnet101",
    description="keras.applications ResNet101 base (avg pool) + softmax; caffe preprocessing",
    default_size=64,
    min_size=32,
    channels=3,
    pretrained=True,
)
def resnet101(input_shape, num_classes, *, image_size=64, weights=None, freeze_base=False):
    return _applications_resnet(
        "resnet101",
        keras.applications.ResNet101,
        input_shape,
        num_classes,
        image_size=image_size,
        weights=weights,
        freeze_base=freeze_base,
    )


@register_model(
    "resnet152",
    description="keras.applications ResNet152 base (avg pool) + softmax; caffe preprocessing",
    default_size=64,
    min_size=32,
    channels=3,
    pretrained=True,
)
def resnet152(input_shape, num_classes, *, image_size=64, weights=None, freeze_base=False):
    return _applications_resnet(
        "resnet152",
        keras.applications.ResNet152,
        input_shape,
        num_classes,
        image_size=image_size,
        weights=weights,
        freeze_base=freeze_base,
    )


# ---------------------------------------------------------------------------- KerasTuner search spaces
# resnet50/101/152 declare none: their keras.applications bases have no width knob, so the tuner
# searches only the fit-time settings for them.
from keras_digits.models.registry import register_search_space  # noqa: E402


@register_search_space("resnet18")
def resnet18_space(hp):
    return {"width": hp.Choice("width", [16, 32, 64], default=64)}


@register_search_space("resnet34")
def resnet34_space(hp):
    return {"width": hp.Choice("width", [16, 32, 64], default=64)}
