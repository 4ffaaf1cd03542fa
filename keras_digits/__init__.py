"""keras_digits: train, tune, explain and serve Keras image classifiers on digit and tissue data."""

__version__ = "0.1.0"

import sys as _sys

if _sys.argv[:1] == ["-m"]:  # being located by `python -m keras_digits.X`: a Ctrl-C during its imports is quiet
    from keras_digits.utils.cli import quiet_interrupts_at_start

    quiet_interrupts_at_start()
