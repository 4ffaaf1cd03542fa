"""Input adaptation shared by every family: rescale, channel conversion, resize, normalisation."""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import layers

# BatchNorm momentum of the project's own models: PyTorch's default (momentum 0.1 there = 0.9 here), as
# in the reports' models. Keras' 0.99 lags far behind the batch statistics on small sets (simple_cnn on
# the 1,797-image digits set was at chance in inference mode while training accuracy was 97%).
# keras.applications bases keep their own settings.
BN_MOMENTUM = 0.9

# Input adaptation (resize, rescale, mean/std) computes in float32 under every precision policy: its
# constants (a mean of 78.73 is 78.5 in bfloat16) and interpolation are not worth 8 bits of mantissa;
# the first convolution casts to the compute dtype.
INPUT_DTYPE = "float32"

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@keras.saving.register_keras_serializable(package="keras_digits")
class GrayToRGB(layers.Layer):
    """Repeat a single channel three times; pass 3-channel input through."""

    def call(self, x):
        if x.shape[-1] == 1:
            return keras.ops.repeat(x, 3, axis=-1)
        return x

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], 3)


def adapt_input(
    inputs,
    *,
    image_size: int | None = None,
    channels: int | None = None,
    scale: float | None = 1.0 / 255.0,
    offset: float = 0.0,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
):
    """Raw pixels -> floats the network wants: cast, channels, resize, rescale, optional mean/std."""
    x = inputs
    if channels == 3 and inputs.shape[-1] == 1:
        x = GrayToRGB(name="gray_to_rgb")(x)
    if image_size is not None and (inputs.shape[1] != image_size or inputs.shape[2] != image_size):
        x = layers.Resizing(image_size, image_size, interpolation="bilinear", name="resize", dtype=INPUT_DTYPE)(x)
    if scale is not None:
        x = layers.Rescaling(scale, offset=offset, name="rescale", dtype=INPUT_DTYPE)(x)
    if mean is not None and std is not None:
        n = x.shape[-1]
        mean = list(mean)[:n] if len(mean) >= n else [mean[0]] * n
        std = list(std)[:n] if len(std) >= n else [std[0]] * n
        x = layers.Normalization(mean=mean, variance=[s * s for s in std], name="normalize", dtype=INPUT_DTYPE)(x)
    return x


def model_inputs(input_shape: tuple[int, ...]):
    """A Keras Input for raw pixels (float32 holding 0..255; uint8 batches are cast on the way in)."""
    return keras.Input(shape=input_shape, name="image")
