"""Shared plumbing for the keras.applications families: ImageNet weight files, base loading, caffe preprocessing.

Weights specs accepted by every pretrained builder (`weights=` kwarg):

* ``None``: random initialisation;
* ``"imagenet"``: Keras's published ``*_notop.h5`` file, taken from Keras's cache folder
  (``$KERAS_HOME/models``, else ``~/.keras/models``). When ``KERAS_DIGITS_OFFLINE=1`` nothing is
  downloaded and a missing file is a `KerasDigitsError`; otherwise Keras is asked to download it and
  any failure becomes a `KerasDigitsError` naming the file and the folder to put it in;
* a path to a weights file for the base (``.weights.h5`` written by ``base.save_weights`` or a legacy
  ``.h5``), loaded by topological order; a file that does not fit the base is a `KerasDigitsError`.

Every pretrained model names its keras.applications sub-model ``"base"`` so training code can
find it with ``model.get_layer("base")`` (two-phase fine-tuning: freeze, then unfreeze).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from typing import Any

import keras
from keras import layers

from keras_digits.errors import KerasDigitsError
from keras_digits.models.common import INPUT_DTYPE, adapt_input, model_inputs

BASE_NAME = "base"
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
_ORIGIN = "https://storage.googleapis.com/tensorflow/keras-applications"

# app name -> (folder under _ORIGIN, include_top=False weights file Keras caches)
IMAGENET_WEIGHTS: dict[str, tuple[str, str]] = {
    "resnet50": ("resnet", "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    "resnet101": ("resnet", "resnet101_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    "resnet152": ("resnet", "resnet152_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    "vgg16": ("vgg16", "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    "xception": ("xception", "xception_weights_tf_dim_ordering_tf_kernels_notop.h5"),
}


@keras.saving.register_keras_serializable(package="keras_digits")
class CaffePreprocess(layers.Layer):
    """``keras.applications.resnet.preprocess_input`` (caffe mode) as a layer: RGB->BGR, minus ImageNet mean.

    Takes 0..255 RGB; no scaling. Has no weights, so saved models round-trip without custom code.
    """

    def __init__(self, mean=CAFFE_MEAN_BGR, **kwargs):
        super().__init__(**kwargs)
        self.mean = tuple(float(m) for m in mean)

    def call(self, x):
        x = keras.ops.cast(x, self.compute_dtype)
        x = keras.ops.flip(x, axis=-1)  # RGB -> BGR
        return x - keras.ops.convert_to_tensor(self.mean, dtype=x.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "mean": list(self.mean)}


def keras_cache_dirs() -> list[str]:
    """Folders where Keras keeps downloaded model files, preferred first (read at call time)."""
    home = os.environ.get("KERAS_HOME")
    if home:
        return [os.path.join(os.path.expanduser(home), "models")]
    dirs = [os.path.join(os.path.expanduser("~"), ".keras", "models")]
    tmp = os.path.join("/tmp", ".keras", "models")  # Keras's fallback when $HOME is not writable
    if tmp not in dirs:
        dirs.append(tmp)
    return dirs


def resolve_imagenet_weights(app_name: str, weights_file_name: str) -> str:
    """Path of Keras's cached ImageNet weights file for `app_name`; download only when allowed."""
    from keras_digits.utils.offline import offline

    dirs = keras_cache_dirs()
    for d in dirs:
        path = os.path.join(d, weights_file_name)
        if os.path.isfile(path):
            return path
    where = dirs[0]
    if offline():
        raise KerasDigitsError(
            f"--weights imagenet for {app_name}: {weights_file_name} is not in the Keras cache folder {where} "
            f"and KERAS_DIGITS_OFFLINE=1 (no network); copy the file there or use --weights none|PATH"
        )
    folder = IMAGENET_WEIGHTS.get(app_name, (app_name, weights_file_name))[0]
    try:
        return keras.utils.get_file(
            weights_file_name,
            f"{_ORIGIN}/{folder}/{weights_file_name}",
            cache_subdir="models",
            cache_dir=os.path.dirname(where),
        )
    except Exception as exc:  # no network, bad hash, unwritable folder...
        raise KerasDigitsError(
            f"--weights imagenet for {app_name}: could not download {weights_file_name} into {where} "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); there may be no network: "
            f"copy the file there or use --weights none|PATH"
        ) from None


def check_weights_spec(spec: Any, app_name: str) -> str | None:
    """Validate a `weights=` value before any model is built; returns the file to load (or None)."""
    if spec is None or (isinstance(spec, str) and spec.strip().lower() in {"", "none", "random"}):
        return None
    if isinstance(spec, str) and spec.strip().lower() == "imagenet":
        if app_name not in IMAGENET_WEIGHTS:
            raise KerasDigitsError(f"{app_name} has no ImageNet weights; use --weights none|PATH")
        return resolve_imagenet_weights(app_name, IMAGENET_WEIGHTS[app_name][1])
    path = os.fspath(spec)
    if not os.path.isfile(path):
        raise KerasDigitsError(f"weights file not found: {path} (expected none, imagenet or a .weights.h5 path)")
    return path


def load_base_weights(base, spec: Any, app_name: str | None = None) -> None:
    """Load `spec` (None | "imagenet" | path) into the base model; a file that does not fit is a KerasDigitsError."""
    path = check_weights_spec(spec, app_name or base.name)
    if path is None:
        return
    try:
        with warnings.catch_warnings(record=True) as caught:  # Keras warns once per layer it cannot fill
            warnings.simplefilter("always")
            base.load_weights(path)
    except Exception as exc:
        msg = str(exc).strip().splitlines()
        raise KerasDigitsError(
            f"weights file {path} does not fit the {app_name or base.name} base "
            f"({type(exc).__name__}: {msg[0] if msg else ''})"
        ) from None
    for w in caught:  # loaded: pass on what Keras had to say
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def he_normal_convolutions(model) -> None:
    """Redraw every Conv2D kernel of `model` He-normal (biases stay zero); seeded by keras.utils.set_random_seed."""
    init = keras.initializers.HeNormal()
    for layer in model._flatten_layers(include_self=False):
        if isinstance(layer, layers.Conv2D):
            layer.kernel.assign(init(tuple(layer.kernel.shape), dtype=layer.kernel.dtype))


def build_pretrained_model(
    input_shape,
    num_classes: int,
    *,
    app_name: str,
    base_fn: Callable[..., Any],
    image_size: int,
    preprocess: str,
    weights: Any = None,
    freeze_base: bool = False,
    head: Callable[[Any], Any] | None = None,
    name: str,
    he_init: bool = False,
):
    """Raw pixels -> [gray->RGB, resize, preprocess] -> keras.applications base named "base" -> head -> softmax.

    preprocess: "caffe" (RGB->BGR, minus ImageNet mean, no scaling) or "tf" (scale to [-1, 1]).
    head: x -> x applied to the base's output before the softmax (default: nothing; the base pools).
    he_init: when no weights are loaded, draw the base's convolution kernels He-normal (He et al., 2015: the
    variance that keeps ReLU activations from shrinking layer after layer) instead of keras.applications'
    Glorot-uniform; for deep ReLU stacks without BatchNorm (VGG16), which do not train from Glorot-uniform.
    """
    path = check_weights_spec(weights, app_name)  # fail fast, before the (slow) base is built
    inputs = model_inputs(input_shape)
    if preprocess == "caffe":
        x = adapt_input(inputs, image_size=image_size, channels=3, scale=None)
        x = CaffePreprocess(name="caffe_preprocess", dtype=INPUT_DTYPE)(x)
    elif preprocess == "tf":
        x = adapt_input(inputs, image_size=image_size, channels=3, scale=1.0 / 127.5, offset=-1.0)
    else:
        raise ValueError(f"unknown preprocess {preprocess!r}")
    base = base_fn(include_top=False, weights=None, input_shape=(image_size, image_size, 3), name=BASE_NAME)
    if path is not None:
        load_base_weights(base, path, app_name)
    elif he_init:
        he_normal_convolutions(base)
    base.trainable = not freeze_base
    x = base(x)
    if head is not None:
        x = head(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name=name)
