"""Model families; importing this package registers every architecture."""

from keras_digits.models import (  # noqa: F401
    alexnet,
    cifar,
    resnet,
    simple_cnn,
    vgg,
    xception,
)
from keras_digits.models.registry import build_model, list_models, model_info, register_model

__all__ = ["build_model", "list_models", "model_info", "register_model"]
