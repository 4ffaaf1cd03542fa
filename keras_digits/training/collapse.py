"""The collapse detector: a model that fits its training batches but is at chance in inference mode.

Two signs, checked after each epoch's validation (and written to the run's collapse.json, which the
report page shows):

* **near chance**: validation accuracy within 15 % of the way from chance to 1 (chance = the share
  of the validation split's most common class) while training accuracy is more than half the way, and
  the model gives one class to 90 % or more of a fixed sample of validation images (so a weak but real
  model on imbalanced data, which mostly answers the majority class, is not called collapsed);
* **modes disagree**: on a fixed sample of validation images the model's predictions in inference
  mode (BatchNorm's population statistics) and in training mode (the batch's own statistics; the
  population statistics are left untouched) agree on fewer than half, and training mode is at least
  0.3 more accurate. Dropout alone moves few predictions of a model that has learnt something.

Either sign is printed during the run with what to do; the usual cause is BatchNorm statistics that
do not fit the weights (see keras_digits.training.precise_bn), the other a learning rate too high.
"""

from __future__ import annotations

import numpy as np

NEAR_CHANCE = 0.15  # validation no further than this fraction of the way from chance to 1 ...
FITTING = 0.5  # ... while training accuracy is more than this fraction of the way
MODE_AGREEMENT = 0.5  # inference and training mode agree on fewer predictions than this ...
MODE_GAP = 0.3  # ... and training mode is this much more accurate
SAMPLE = 64  # validation images the mode check runs on
ONE_CLASS = 0.9  # near chance counts when the model gives one class to at least this share of them

ADVICE = (
    "the model fits its training batches but not in inference mode. Usual causes: BatchNorm population "
    "statistics that do not fit the weights (keep --precise-bn at auto or raise it, e.g. --precise-bn 40; "
    "train more epochs) or a learning rate too high (lower --lr); see docs/training.md#when-a-run-collapses"
)


def chance_level(labels) -> float:
    """Accuracy of always answering the most common class of `labels`."""
    labels = np.asarray(labels).astype(np.int64).ravel()
    if labels.size == 0:
        return 0.0
    return float(np.bincount(labels).max() / labels.size)


def training_mode_predictions(model, images: np.ndarray) -> np.ndarray:
    """Class predictions of `model` on `images` in training mode (each batch's own statistics), with every
    BatchNorm momentum at 1 so that the population statistics stay as they were."""
    from keras_digits.training.precise_bn import batchnorm_layers, momenta_set_to

    with momenta_set_to(batchnorm_layers(model), 1.0):
        return np.asarray(model(images, training=True)).argmax(axis=-1)


def mode_check(model, images: np.ndarray, labels: np.ndarray, both: bool = True) -> dict[str, float]:
    """On `images`: the share of the most predicted class in inference mode and, with `both` (a model with
    BatchNorm), the agreement of inference- and training-mode predictions and each mode's accuracy."""
    labels = np.asarray(labels).ravel()
    inference = np.asarray(model(images, training=False)).argmax(axis=-1)
    out = {"images": int(len(labels)), "top_share": top_share(inference)}
    if not both:
        return out
    training = training_mode_predictions(model, images)
    return {
        **out,
        "agreement": float(np.mean(inference == training)),
        "inference_accuracy": float(np.mean(inference == labels)),
        "training_mode_accuracy": float(np.mean(training == labels)),
    }


def top_share(predictions: np.ndarray) -> float:
    """The share of the most common value of `predictions` (1.0: one class for every image)."""
    predictions = np.asarray(predictions).ravel()
    return float(np.bincount(predictions).max() / predictions.size) if predictions.size else 0.0


def near_chance_below(chance: float) -> float:
    """The validation accuracy at or below which a run counts as near chance."""
    return chance + NEAR_CHANCE * max(1e-9, 1.0 - chance)


def collapse_signs(
    train_accuracy: float | None, val_accuracy: float | None, chance: float, modes: dict | None = None
) -> list[str]:
    """The signs of a collapse these figures show, each as a sentence (empty: none)."""
    signs = []
    if (
        train_accuracy is not None
        and val_accuracy is not None
        and np.isfinite(train_accuracy)
        and np.isfinite(val_accuracy)
        and train_accuracy >= chance + FITTING * max(1e-9, 1.0 - chance)
        and val_accuracy <= near_chance_below(chance)
        and (not modes or modes.get("top_share", 1.0) >= ONE_CLASS)
    ):
        signs.append(
            f"validation accuracy {val_accuracy:.4f} is near chance ({chance:.4f}) while training accuracy "
            f"is {train_accuracy:.4f}"
        )
    if (
        modes
        and "agreement" in modes
        and modes["agreement"] < MODE_AGREEMENT
        and modes["training_mode_accuracy"] - modes["inference_accuracy"] >= MODE_GAP
    ):
        signs.append(
            f"on {modes['images']} validation images inference-mode and training-mode predictions agree on "
            f"{modes['agreement']:.0%} (accuracy {modes['inference_accuracy']:.2f} in inference mode, "
            f"{modes['training_mode_accuracy']:.2f} with batch statistics)"
        )
    return signs
