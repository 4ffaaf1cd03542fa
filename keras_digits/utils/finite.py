"""Checks that a model's weights and outputs are finite numbers: a diverged model (NaN or inf weights)
is never saved, exported or served."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np


def nonfinite_variables(variables: Iterable[Any]) -> list[str]:
    """Names of the floating-point variables holding NaN or inf (Keras or TensorFlow variables)."""
    bad = []
    for v in variables:
        dtype = getattr(v, "dtype", None)
        name = getattr(v, "path", None) or getattr(v, "name", "?")
        try:
            if dtype is None or not np.issubdtype(np.dtype(getattr(dtype, "as_numpy_dtype", dtype)), np.floating):
                continue
        except TypeError:  # string, resource and other non-numeric variables
            continue
        value = np.asarray(v.numpy() if hasattr(v, "numpy") else v)
        if not np.isfinite(value).all():
            bad.append(str(name))
    return bad


def model_is_finite(model) -> bool:
    """True when every weight of a Keras model is finite."""
    return not nonfinite_variables(model.weights)


def describe_nonfinite(names: list[str], limit: int = 3) -> str:
    """'2 weights (dense/kernel, dense/bias)' for an error message."""
    shown = ", ".join(names[:limit]) + (" ..." if len(names) > limit else "")
    return f"{len(names)} weight{'s' if len(names) != 1 else ''} ({shown})"
