"""What a run sets up before training: seeds and precision, the model built and compiled for a dataset."""

from __future__ import annotations

import sys
from typing import Any

from keras_digits.config import TrainConfig
from keras_digits.errors import KerasDigitsError


def setup_runtime(cfg: TrainConfig, verbose: int = 0) -> TrainConfig:
    """Seeds, determinism and the precision policy (keras_digits.runtime.precision); returns `cfg` with its
    precision resolved (auto -> what this machine runs best)."""
    import keras
    import tensorflow as tf

    from keras_digits.runtime import precision

    keras.utils.set_random_seed(cfg.seed)
    if cfg.deterministic:
        tf.config.experimental.enable_op_determinism()
    resolved = precision.apply(cfg.precision, verbose=verbose)
    return cfg.replace(precision=resolved.name)


def build_for(cfg: TrainConfig, input_shape: tuple[int, ...], num_classes: int, input_stats=None):
    """Build the configured model (weights, freezing, --normalize layer, float32 output under mixed
    precision) for a dataset's input shape; `input_stats` is `Pipelines.input_stats`."""
    from keras_digits.models import build_model, model_info
    from keras_digits.models.normalize import add_input_normalization, imagenet_stats
    from keras_digits.runtime.strategy import float32_outputs

    kwargs: dict[str, Any] = dict(cfg.model_kwargs)
    info = model_info(cfg.arch)
    accepted = info.kwargs_accepted()
    if cfg.weights not in ("none", "", None):
        if "weights" not in accepted:
            raise KerasDigitsError(
                f"{cfg.arch} has no pretrained weights; --weights applies to: " + ", ".join(_pretrained_archs())
            )
        kwargs["weights"] = cfg.weights
    if cfg.fine_tune_at is not None and not info.pretrained:
        raise KerasDigitsError(
            "--fine-tune-at needs a pretrained family with a 'base' model: " + ", ".join(_pretrained_archs())
        )
    if (cfg.freeze_base or cfg.fine_tune_at is not None) and "freeze_base" in accepted:
        kwargs["freeze_base"] = True
    model = build_model(cfg.arch, input_shape, num_classes, image_size=cfg.image_size, **kwargs)
    if cfg.normalize != "none":
        if input_stats is None and cfg.normalize == "dataset":
            raise KerasDigitsError(
                "--normalize dataset needs the training split's statistics: "
                "build_for(..., input_stats=make_datasets(cfg, bundle).input_stats)"
            )
        stats = input_stats if cfg.normalize == "dataset" else imagenet_stats(input_shape[-1])
        model = add_input_normalization(model, stats)
    return float32_outputs(model)


def _pretrained_archs() -> list[str]:
    from keras_digits.models import list_models, model_info

    return [n for n in list_models() if model_info(n).pretrained]


def compile_model(
    model, cfg: TrainConfig, lr: float | None = None, steps_per_epoch: int | None = None, epochs: int | None = None
) -> None:
    """Compile with the configured optimizer (a per-step schedule over `epochs` x `steps_per_epoch`
    steps for --schedule onecycle), sparse cross-entropy (label-smoothed if asked) and accuracy."""
    from keras_digits.training.optim import (  # imports keras: not at module level (quiet start-up)
        make_loss,
        make_optimizer,
    )

    model.compile(
        optimizer=make_optimizer(cfg, lr, steps_per_epoch, epochs),
        loss=make_loss(cfg),
        metrics=["accuracy"],
        jit_compile=cfg.jit_compile,
        steps_per_execution=cfg.steps_per_execution,
    )


def unfreeze_from(model, layer_index: int) -> int:
    """Make the pretrained base trainable from `layer_index` on (BatchNorm layers stay frozen, as
    Keras' transfer-learning guide advises); returns how many base layers are now trainable."""
    import keras

    try:
        base = model.get_layer("base")
    except ValueError:
        raise KerasDigitsError(
            "--fine-tune-at needs a pretrained family with a 'base' model: " + ", ".join(_pretrained_archs())
        ) from None
    n = len(base.layers)
    if not 0 <= layer_index < n:
        raise KerasDigitsError(f"--fine-tune-at {layer_index} is outside the base's {n} layers (0..{n - 1})")
    base.trainable = True
    for i, layer in enumerate(base.layers):
        layer.trainable = i >= layer_index and not isinstance(layer, keras.layers.BatchNormalization)
    return sum(1 for layer in base.layers[layer_index:] if layer.trainable)


def check_fits_in_memory(cfg: TrainConfig) -> None:
    """Refuse a working size whose training batch cannot fit in this machine's memory (its first layers'
    activations and their gradients: about 64 float32 maps per RGB channel), before any data is loaded:
    --image-size, or the images' own size where that is large (a MedMNIST --size)."""
    side = max(cfg.image_size or 0, cfg.size or 0)
    if not side:
        return  # each arch's default size fits
    import psutil

    needed = cfg.batch_size * side**2 * 3 * 4 * 64
    available = psutil.virtual_memory().available
    if needed > available:
        what = f"--image-size {cfg.image_size}" if cfg.image_size == side else f"--size {cfg.size}"
        raise KerasDigitsError(
            f"{what} with --batch-size {cfg.batch_size} needs about "
            f"{needed / 2**30:,.1f} GiB for one training batch; {available / 2**30:.1f} GiB are "
            "free: lower --batch-size" + (" or --image-size" if cfg.image_size else "")
        )


def peak_rss_bytes() -> int | None:
    """This process's peak resident memory, in bytes (None where the OS does not say)."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # macOS reports bytes, Linux KiB
