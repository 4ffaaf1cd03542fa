"""Model families; importing this package registers every architecture."""

from keras_digits.models import simple_cnn  # noqa: F401
from keras_digits.models import alexnet, cifar, resnet, vgg, xception  # noqa: F401
from keras_digits.models.registry import build_model, list_models, model_info, register_model

__all__ = ["build_model", "list_models", "model_info", "register_model"]
