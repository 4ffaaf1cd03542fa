"""Input normalisation as a layer inside the model (`--normalize dataset|imagenet`), so a saved model
still takes raw 0..255 pixels.

Every architecture adapts its input itself (cast, resize, ``Rescaling(1/255)``); `add_input_normalization`
puts one ``keras.layers.Normalization`` layer in front of that, working in raw-pixel units: it maps
``x -> (x - 255*mean) / std``, i.e. ``255 * ((x/255 - mean) / std)``. The architecture's own
``Rescaling(1/255)`` then hands its first layer ``(x/255 - mean) / std``: zero mean and unit variance
per channel instead of 0..1. (Families whose own input scaling is not 1/255, the pretrained ones,
apply it to that standardised image as if it were raw; ``--normalize`` is meant for the from-scratch
models.) ``mean`` and ``std`` are per channel on the 0..1 scale: the training split's (computed by the
data layer) or the ImageNet constants (`imagenet_stats`; their average for greyscale).
"""

from __future__ import annotations

import numpy as np

from keras_digits.models.common import IMAGENET_MEAN, IMAGENET_STD

InputStats = tuple[tuple[float, ...], tuple[float, ...]]  # (mean, std) per channel, 0..1 scale


def imagenet_stats(channels: int) -> InputStats:
    """The ImageNet mean and std for 3 channels, their average for 1."""
    if channels == 1:
        return (float(np.mean(IMAGENET_MEAN)),), (float(np.mean(IMAGENET_STD)),)
    return tuple(IMAGENET_MEAN), tuple(IMAGENET_STD)


def add_input_normalization(model, stats: InputStats):
    """The same network with a raw-pixel Normalization layer ('input_normalize') right after its input.

    The result is one flat functional model (rebuilt from config, weights copied), so it saves, loads
    and exposes its layers exactly like the original; see the module docstring for the maths."""
    import keras

    from keras_digits.models.common import INPUT_DTYPE

    mean, std = (np.asarray(v, dtype=np.float64) for v in stats)
    norm = keras.layers.Normalization(
        mean=(255.0 * mean).tolist(), variance=(std * std).tolist(), name="input_normalize", dtype=INPUT_DTYPE
    )
    inputs = keras.Input(shape=model.inputs[0].shape[1:], name=model.inputs[0].name)
    wired = keras.Model(inputs, model.call(norm(inputs)), name=model.name)
    fresh = keras.Model.from_config(wired.get_config())
    fresh.set_weights(wired.get_weights())
    return fresh
