"""keras_digits: train, tune, explain and serve Keras image classifiers on digit and tissue data."""

__version__ = "0.1.0"
