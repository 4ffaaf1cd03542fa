"""Named training recipes: JSON config files shipped with the package, chosen with `--recipe NAME`.

A recipe is an ordinary config file (what `--config` reads): defaults < --recipe < --config < flags
given on the command line. docs/training.md ("Recipes") gives each one's measured figures and the
command that produced them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from keras_digits.errors import KerasDigitsError

HERE = Path(__file__).resolve().parent
RECIPES = {
    "reports": "the course reports' setting and today's defaults: Adam 1e-3, batch 32, 15 epochs, float32",
    "fast": "the quickest honest route to >= 99.0 % MNIST test accuracy on a CPU (simple_cnn at 16/32/64 "
    "filters, 3 epochs, batch 128, one-cycle schedule; bfloat16 where the CPU has AMX, float32 elsewhere)",
    "best": "the highest single-model MNIST accuracy in about half an hour on 2 cores (simple_cnn at "
    "64/128/256 filters, augmentation, label smoothing, one-cycle schedule)",
    "medmnist": "the MedMNIST v2 benchmark's recipe: ResNet-18, Adam 1e-3, batch 128, 100 epochs, lr x0.1 at "
    "50 % and 75 %, the epoch with the best validation AUC kept",
}


def recipe_path(name: str) -> Path:
    """The JSON file of recipe `name`."""
    if name not in RECIPES:
        raise KerasDigitsError(f"unknown recipe {name!r}; choose one of: {', '.join(RECIPES)}")
    return HERE / f"{name}.json"


def recipe_config(name: str) -> dict[str, Any]:
    """The options recipe `name` sets (validated like any config file)."""
    from keras_digits.config import load_config_file

    return load_config_file(recipe_path(name))


def recipes_help() -> str:
    text = "named configuration: " + "; ".join(f"{k} = {v}" for k, v in RECIPES.items())
    return text.replace("%", "%%")  # argparse formats help with %
