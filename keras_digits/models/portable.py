"""A model's stock-Keras twin: the same network in float32, made only of layers that ship with Keras.

The project's models use a few layers of their own: `FusedBatchNormalization` (models/batchnorm.py),
two `Conv2D` subclasses that change how the training step is computed (models/conv.py and
models/smallconv.py), and two input-adaptation layers, `GrayToRGB` (models/common.py) and
`CaffePreprocess` (models/pretrained.py). A `.keras` file holding them opens only where this package
is installed and imported. `stock_twin` rebuilds the model with

    FusedBatchNormalization        -> keras.layers.BatchNormalization (same four variables)
    Conv2D subclasses              -> keras.layers.Conv2D (same kernel and bias)
    GrayToRGB (1 -> 3 channels)    -> a frozen 1x1 keras.layers.Conv2D, kernel of ones, no bias
    GrayToRGB (3 channels in)      -> keras.layers.Identity
    CaffePreprocess                -> a frozen 1x1 keras.layers.Conv2D: a channel-swapping kernel of
                                      zeros and ones, bias = -mean (RGB -> BGR, minus the mean)

The 1x1 convolutions compute the same numbers exactly (each output is one input times 1.0, plus
zeros, plus the bias). Every layer gets the float32 dtype policy, whatever precision the run
trained in: ONNX, LiteRT and most runtimes want float32 graphs. The twin is not compiled: it holds
no optimizer, loss or schedule (those are this package's own classes too).
"""

from __future__ import annotations

import numpy as np

from keras_digits.errors import KerasDigitsError


def _float32_config(layer) -> dict:
    config = dict(layer.get_config())
    if "dtype" in config:
        config["dtype"] = "float32"
    return config


def is_stock(layer) -> bool:
    """Whether `layer`'s class ships with Keras (its module is under `keras.`)."""
    return type(layer).__module__.split(".")[0] == "keras"


def _replacement(layer):
    """A stock layer standing for `layer` (None: clone the layer as it is, in float32)."""
    import keras

    from keras_digits.models.batchnorm import FusedBatchNormalization
    from keras_digits.models.common import GrayToRGB
    from keras_digits.models.pretrained import CaffePreprocess

    name = layer.name
    if isinstance(layer, FusedBatchNormalization):
        return keras.layers.BatchNormalization.from_config(_float32_config(layer))
    if isinstance(layer, keras.layers.Conv2D) and not is_stock(layer):
        return keras.layers.Conv2D.from_config(_float32_config(layer))
    if isinstance(layer, GrayToRGB):
        if int(layer.input.shape[-1]) == 3:
            return keras.layers.Identity(name=name, dtype="float32")
        return keras.layers.Conv2D(3, 1, use_bias=False, trainable=False, name=name, dtype="float32")
    if isinstance(layer, CaffePreprocess):
        return keras.layers.Conv2D(3, 1, use_bias=True, trainable=False, name=name, dtype="float32")
    if not is_stock(layer):
        raise KerasDigitsError(
            f"layer {name!r} ({type(layer).__module__}.{type(layer).__name__}) has no stock Keras equivalent"
        )
    return None


def _clone(layer):
    import keras

    if isinstance(layer, keras.Model):  # a nested model (a keras.applications base): cloned layer by layer
        return layer
    new = _replacement(layer)
    if new is not None:
        return new
    return type(layer).from_config(_float32_config(layer))


def _copy_weights(source, target) -> None:
    """Copy weights layer by layer (matched by name, nested models recursively); the replaced
    input-adaptation layers get their fixed kernels."""
    import keras

    from keras_digits.models.common import GrayToRGB
    from keras_digits.models.pretrained import CaffePreprocess

    for old in source.layers:
        if not old.weights and not isinstance(old, (GrayToRGB, CaffePreprocess)):
            continue  # nothing to copy (input layers, which a nested clone renames, among them)
        new = target.get_layer(old.name)
        if isinstance(old, keras.Model):
            _copy_weights(old, new)
        elif isinstance(old, GrayToRGB):
            if new.weights:
                new.set_weights([np.ones((1, 1, 1, 3), np.float32)])
        elif isinstance(old, CaffePreprocess):
            swap = np.zeros((1, 1, 3, 3), np.float32)
            for out_channel in range(3):
                swap[0, 0, 2 - out_channel, out_channel] = 1.0  # output channel c is input channel 2 - c
            new.set_weights([swap, -np.asarray(old.mean, np.float32)])
        else:
            new.set_weights(old.get_weights())


def stock_twin(model):
    """The same network, float32, built only from stock Keras layers, with `model`'s weights (module doc)."""
    import keras

    try:
        twin = keras.models.clone_model(model, clone_function=_clone, recursive=True)
    except KerasDigitsError:
        raise
    except Exception as exc:  # Keras raises many types for a graph it cannot rebuild
        raise KerasDigitsError(
            f"cannot rebuild {model.name} from stock Keras layers: {type(exc).__name__}: {exc}"
        ) from None
    _copy_weights(model, twin)
    foreign = [f"{l.name} ({type(l).__name__})" for l in all_layers(twin) if not is_stock(l)]
    if foreign:
        raise KerasDigitsError(f"the stock twin still holds non-Keras layers: {', '.join(foreign)}")
    return twin


def all_layers(model):
    """Every layer of a model, nested models' layers in their place."""
    import keras

    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from all_layers(layer)
        else:
            yield layer
