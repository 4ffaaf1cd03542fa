"""Explanations of a trained run's predictions: attribution methods, target-layer discovery,
faithfulness (deletion/insertion) and sanity (parameter randomization) checks, and the CLI
``python -m keras_digits.explain``. Importing this package loads no TensorFlow.

Modules: graph (layers, rewiring), core (Explainer, batched primitives), cam, gradients,
perturbation (the methods), faithfulness, sanity, figures (the PNG grid), cli.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from keras_digits.errors import KerasDigitsError

# name -> (module, function, one line). The order is the grid's column order.
METHODS: dict[str, tuple[str, str, str]] = {
    "gradcam": ("cam", "gradcam", "Grad-CAM (Selvaraju et al. 2017) on the target layer"),
    "gradcampp": ("cam", "gradcampp", "Grad-CAM++ (Chattopadhay et al. 2018) on the target layer"),
    "scorecam": ("cam", "scorecam", "Score-CAM (Wang et al. 2020): channel masks weighted by the masked score"),
    "saliency": ("gradients", "saliency", "gradient saliency |d score / d pixel| (Simonyan et al. 2014)"),
    "smoothgrad": ("gradients", "smoothgrad", "SmoothGrad (Smilkov et al. 2017): saliency averaged over noisy copies"),
    "ig": ("gradients", "ig", "Integrated Gradients (Sundararajan et al. 2017) from a black image"),
    "ig_blur": ("gradients", "ig_blur", "Integrated Gradients from a blurred copy of the image"),
    "occlusion": ("perturbation", "occlusion", "occlusion (Zeiler & Fergus 2014): score drop under a black patch"),
    "rise": ("perturbation", "rise", "RISE (Petsiuk et al. 2018): score-weighted random masks"),
}
CAM_METHODS = ("gradcam", "gradcampp", "scorecam")
ALIASES = {
    "gradcam++": "gradcampp",
    "grad-cam": "gradcam",
    "grad-cam++": "gradcampp",
    "score-cam": "scorecam",
    "ig-blur": "ig_blur",
    "integrated_gradients": "ig",
    "integrated-gradients": "ig",
}


def parse_methods(text: str) -> list[str]:
    """'gradcam,ig' or 'all' -> method names in the order given (duplicates dropped); unknown ones are
    one error listing the known names."""
    names: list[str] = []
    for raw in text.split(","):
        name = raw.strip().lower()
        if not name:
            continue
        if name == "all":
            names += list(METHODS)
            continue
        name = ALIASES.get(name, name)
        if name not in METHODS:
            raise KerasDigitsError(f"unknown method {raw.strip()!r}; known: {', '.join(METHODS)} (or all)")
        names.append(name)
    if not names:
        raise KerasDigitsError(f"--method is empty; known: {', '.join(METHODS)} (or all)")
    return list(dict.fromkeys(names))


def method_fn(name: str) -> Callable:
    """The function computing method `name`: fn(explainer, x, targets, contrasts) -> (N, H, W) float32."""
    module, fn, _ = METHODS[name]
    return getattr(importlib.import_module(f"keras_digits.explain.{module}"), fn)
