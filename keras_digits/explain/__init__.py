"""Explanations of any Keras 3 image classifier: 19 attribution methods, target-layer discovery, metrics
(deletion/insertion, MuFidelity, ROAD, ink localisation, complexity, max-sensitivity, agreement), the
randomization sanity check, the Python API (`explain`, `evaluate`) and the CLI ``python -m keras_digits.explain``.
Importing this package loads no TensorFlow.

Modules: graph (layers, rewiring), core (Explainer, batched primitives), modified (backpropagation rules),
cam, gradients, perturbation, superpixels (the methods); faithfulness, mufidelity, road, localisation,
complexity, sensitivity, agreement, stats, scorecard (the metrics); sanity; loading (model files), api;
figures (the PNG grid), session (what both CLI modes share), cli.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from keras_digits.errors import KerasDigitsError

# name -> (module, function, one line). The order is the grid's column order.
METHODS: dict[str, tuple[str, str, str]] = {
    "gradcam": ("cam", "gradcam", "Grad-CAM (Selvaraju et al. 2017) on the target layer"),
    "gradcampp": ("cam", "gradcampp", "Grad-CAM++ (Chattopadhay et al. 2018) on the target layer"),
    "layercam": (
        "cam",
        "layercam",
        "LayerCAM (Jiang et al. 2021): activations weighted by their own positive gradients",
    ),
    "scorecam": ("cam", "scorecam", "Score-CAM (Wang et al. 2020): channel masks weighted by the masked score"),
    "guided_gradcam": ("cam", "guided_gradcam", "Guided Grad-CAM (Selvaraju et al. 2017): guided backprop x Grad-CAM"),
    "saliency": ("gradients", "saliency", "gradient saliency |d score / d pixel| (Simonyan et al. 2014)"),
    "gradinput": ("gradients", "gradinput", "Gradient x Input (Shrikumar et al. 2016)"),
    "guided_backprop": ("gradients", "guided_backprop", "Guided Backpropagation (Springenberg et al. 2015)"),
    "smoothgrad": ("gradients", "smoothgrad", "SmoothGrad (Smilkov et al. 2017): saliency averaged over noisy copies"),
    "squaregrad": (
        "gradients",
        "squaregrad",
        "SquareGrad (Hooker et al. 2019): mean squared gradient over noisy copies",
    ),
    "vargrad": ("gradients", "vargrad", "VarGrad (Adebayo et al. 2018): gradient variance over noisy copies"),
    "ig": ("gradients", "ig", "Integrated Gradients (Sundararajan et al. 2017) from a black image"),
    "ig_blur": ("gradients", "ig_blur", "Integrated Gradients from a blurred copy of the image"),
    "gradshap": ("gradients", "gradshap", "GradientSHAP / expected gradients (Lundberg & Lee 2017; Erion et al. 2021)"),
    "deeplift": ("gradients", "deeplift", "DeepLIFT, rescale rule (Shrikumar et al. 2017), from a black reference"),
    "occlusion": ("perturbation", "occlusion", "occlusion (Zeiler & Fergus 2014): score drop under a black patch"),
    "rise": ("perturbation", "rise", "RISE (Petsiuk et al. 2018): score-weighted random masks"),
    "lime": ("superpixels", "lime", "LIME (Ribeiro et al. 2016) on SLIC superpixels"),
    "kernelshap": ("superpixels", "kernelshap", "KernelSHAP (Lundberg & Lee 2017) on SLIC superpixels"),
}
CAM_METHODS = ("gradcam", "gradcampp", "layercam", "scorecam", "guided_gradcam")
# maps that keep their sign (positive: evidence for the target)
SIGNED = ("gradinput", "ig", "ig_blur", "gradshap", "deeplift", "occlusion", "lime", "kernelshap")
ALIASES = {
    "gradcam++": "gradcampp",
    "grad-cam": "gradcam",
    "grad-cam++": "gradcampp",
    "score-cam": "scorecam",
    "ig-blur": "ig_blur",
    "integrated_gradients": "ig",
    "integrated-gradients": "ig",
    "layer-cam": "layercam",
    "guided-gradcam": "guided_gradcam",
    "guided_grad_cam": "guided_gradcam",
    "gradient_x_input": "gradinput",
    "gradxinput": "gradinput",
    "input_x_gradient": "gradinput",
    "guided": "guided_backprop",
    "guided-backprop": "guided_backprop",
    "gradientshap": "gradshap",
    "gradient-shap": "gradshap",
    "expected_gradients": "gradshap",
    "kernel-shap": "kernelshap",
    "shap": "kernelshap",
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


def explain(model, images, method="gradcam", target=None, contrast=None, layer=None, value_range=None, **settings):
    """Attribution maps of any Keras 3 image classifier (see explain.api.explain)."""
    from keras_digits.explain.api import explain as run

    return run(model, images, method, target, contrast, layer, value_range, **settings)


def evaluate(model, images, maps, metrics="all", **kwargs):
    """The metrics of `maps` (see explain.api.evaluate)."""
    from keras_digits.explain.api import evaluate as run

    return run(model, images, maps, metrics, **kwargs)
