"""Training: `train_and_evaluate(cfg, run_dir)` and the `python -m keras_digits.train` CLI."""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from keras_digits.cli import fraction, positive_float, positive_int, quiet_tensorflow, run_cli
from keras_digits.config import (
    BALANCES, NORMALIZES, OPTIMIZERS, SCHEDULES, STRATEGIES, TrainConfig, load_config_file,
)
from keras_digits.errors import KerasDigitsError
from keras_digits.io import atomic_path, read_json_object, replace_dir, write_json

RUNS_DIR = Path("runs")


# ---------------------------------------------------------------------------- optimisers, schedules
def make_optimizer(cfg: TrainConfig, lr: float | None = None):
    """The Keras optimizer named by the config."""
    import keras

    lr = cfg.lr if lr is None else lr
    wd = cfg.weight_decay or None
    if cfg.optimizer == "adam":
        return keras.optimizers.Adam(lr, weight_decay=wd)
    if cfg.optimizer == "sgd":
        return keras.optimizers.SGD(lr, momentum=float(cfg.momentum), weight_decay=wd)
    if cfg.optimizer == "nadam":
        return keras.optimizers.Nadam(lr, weight_decay=wd)
    if cfg.optimizer == "adagrad":
        return keras.optimizers.Adagrad(lr, weight_decay=wd)
    if cfg.optimizer == "adamw":
        return keras.optimizers.AdamW(lr, weight_decay=cfg.weight_decay or 1e-4)
    if cfg.optimizer == "rmsprop":
        return keras.optimizers.RMSprop(lr, momentum=0.0, weight_decay=wd)
    raise KerasDigitsError(f"unknown optimizer {cfg.optimizer!r}")


def schedule_lr(cfg: TrainConfig, epoch: int, base_lr: float | None = None) -> float:
    """Learning rate for an epoch (0-based) under the step or cosine schedule."""
    base = cfg.lr if base_lr is None else base_lr
    if cfg.schedule == "step":  # x0.1 at 50% and 75% of the epochs (the MedMNIST recipe)
        return base * (0.1 ** sum(epoch >= cfg.epochs * f for f in (0.5, 0.75)))
    if cfg.schedule == "cosine":
        warm = cfg.warmup_epochs
        if epoch < warm:
            return base * (epoch + 1) / (warm + 1)
        span = max(1, cfg.epochs - warm)
        return base * 0.5 * (1 + math.cos(math.pi * (epoch - warm) / span))
    return base


def schedule_callbacks(cfg: TrainConfig) -> list:
    """Callbacks that implement --schedule."""
    import keras

    if cfg.schedule == "plateau":
        return [keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.1, patience=max(1, cfg.patience // 2),
                                                  min_lr=cfg.lr * 1e-3, verbose=cfg.verbose)]
    if cfg.schedule in ("step", "cosine"):
        return [keras.callbacks.LearningRateScheduler(lambda e, lr: schedule_lr(cfg, e), verbose=0)]
    return []


# ---------------------------------------------------------------------------- callbacks
def _atomic_checkpoint_cls():
    import keras

    class AtomicCheckpoint(keras.callbacks.Callback):
        """Save the model with the best monitored value to `path` via a temporary file."""

        def __init__(self, path: Path, monitor: str = "val_accuracy"):
            super().__init__()
            self.path, self.monitor = Path(path), monitor
            self.best = -np.inf

        def on_epoch_end(self, epoch, logs=None):
            value = (logs or {}).get(self.monitor)
            if value is None or not np.isfinite(value) or value <= self.best:
                return
            self.best = float(value)
            with atomic_path(self.path) as tmp:
                self.model.save(tmp)

    return AtomicCheckpoint


def _log_lr_cls():
    import keras

    class LogLearningRate(keras.callbacks.Callback):
        """Put the optimizer's current learning rate into each epoch's logs (history.csv column)."""

        def on_epoch_end(self, epoch, logs=None):
            if logs is not None and "learning_rate" not in logs:
                logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))

    return LogLearningRate


BACKUP, FINE_TUNE_BACKUP = "backup", "backup-fine-tune"  # BackupAndRestore folders of the two phases
PHASE_ONE = "phase1.weights.h5", "phase1.json"  # the model after phase one, while phase two runs


def make_callbacks(cfg: TrainConfig, run_dir: Path, resuming: bool, backup: str = BACKUP) -> list:
    """EarlyStopping, best-model checkpoint, TensorBoard, CSV log, backup/restore, NaN guard, schedule."""
    import keras

    checkpoint = _atomic_checkpoint_cls()(run_dir / "best.keras", monitor="val_accuracy")
    if resuming and (run_dir / "best.keras").exists() and (run_dir / "history.csv").exists():
        from keras_digits.report import read_history

        seen = [v for v in read_history(run_dir / "history.csv").get("val_accuracy", []) if np.isfinite(v)]
        checkpoint.best = max(seen, default=-np.inf)  # a resumed run keeps its best model unless beaten
    cbs = [
        _log_lr_cls()(),  # first, so CSVLogger and TensorBoard see the learning rate of each epoch
        keras.callbacks.TerminateOnNaN(),
        keras.callbacks.BackupAndRestore(str(run_dir / backup), delete_checkpoint=True),
        checkpoint,
        keras.callbacks.CSVLogger(str(run_dir / "history.csv"), append=resuming),
        keras.callbacks.TensorBoard(log_dir=str(run_dir / "logs"), histogram_freq=0, write_graph=False),
    ]
    if cfg.early_stopping and cfg.patience > 0:
        cbs.append(keras.callbacks.EarlyStopping(monitor="val_accuracy", mode="max", patience=cfg.patience,
                                                 restore_best_weights=True, verbose=cfg.verbose))
    return cbs + schedule_callbacks(cfg)


# ---------------------------------------------------------------------------- run directory
def default_run_dir(cfg: TrainConfig, root: Path = RUNS_DIR) -> Path:
    """runs/<dataset>-<arch>-s<seed>[-N]: the first such folder that does not hold a finished run,
    so rerunning an interrupted command resumes it and a finished run is never overwritten."""
    base = root / f"{cfg.dataset}-{cfg.arch}-s{cfg.seed}"
    candidate, n = base, 1
    while (candidate / "metrics.json").exists():
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    return candidate


def staging_dir(run_dir: Path, overwrite: bool) -> Path:
    """Where to train: `run_dir` itself, or, when --overwrite replaces a finished run there, a sibling
    `<name>.overwrite` that replaces it only once the new run has finished, so that a
    failed or interrupted rerun leaves the old run whole (and a repeated --overwrite resumes it)."""
    if not (run_dir / "metrics.json").exists():
        return run_dir
    if not overwrite:
        raise KerasDigitsError(f"{run_dir} already holds a finished run; pass --overwrite or another --run-dir")
    staged = run_dir.with_name(run_dir.name + ".overwrite")
    if (staged / "metrics.json").exists():  # finished but never swapped in (killed in between): start over
        shutil.rmtree(staged)
    return staged


def prepare_run_dir(run_dir: Path, cfg: TrainConfig) -> bool:
    """Create or check `run_dir`, which holds no finished run (`staging_dir` chose it); True when an
    interrupted run will resume."""
    resuming = any((run_dir / name).exists() for name in (BACKUP, FINE_TUNE_BACKUP, PHASE_ONE[1]))
    if resuming and (run_dir / "config.json").is_file():
        old = read_json_object(run_dir / "config.json")
        old.pop("verbose", None)
        new = cfg.to_dict()
        new.pop("verbose", None)
        if old != new:
            raise KerasDigitsError(
                f"{run_dir} holds an interrupted run with a different config; pass --overwrite or another --run-dir"
            )
    run_dir.mkdir(parents=True, exist_ok=True)
    return resuming


# ---------------------------------------------------------------------------- the seam
def setup_runtime(cfg: TrainConfig) -> None:
    """Seeds, determinism and precision policy."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(cfg.seed)
    if cfg.deterministic:
        tf.config.experimental.enable_op_determinism()
    keras.mixed_precision.set_global_policy("float32")  # no policy leaks from an earlier run in-process
    if cfg.mixed_precision:
        if tf.config.list_physical_devices("GPU"):
            keras.mixed_precision.set_global_policy("mixed_float16")
        else:
            print("note: --mixed-precision needs a GPU; training in float32 on CPU", file=sys.stderr)


def build_for(cfg: TrainConfig, input_shape: tuple[int, ...], num_classes: int, input_stats=None):
    """Build the configured model (weights, freezing, --normalize layer, float32 output under mixed
    precision) for a dataset's input shape; `input_stats` is `Pipelines.input_stats`."""
    from keras_digits.data.datasets import add_input_normalization, normalization_stats
    from keras_digits.models import build_model, model_info
    from keras_digits.strategy import float32_outputs

    kwargs: dict[str, Any] = dict(cfg.model_kwargs)
    info = model_info(cfg.arch)
    accepted = info.kwargs_accepted()
    if cfg.weights not in ("none", "", None):
        if "weights" not in accepted:
            raise KerasDigitsError(f"{cfg.arch} has no pretrained weights; --weights applies to: "
                                   + ", ".join(_pretrained_archs()))
        kwargs["weights"] = cfg.weights
    if cfg.fine_tune_at is not None and not info.pretrained:
        raise KerasDigitsError("--fine-tune-at needs a pretrained family with a 'base' model: "
                               + ", ".join(_pretrained_archs()))
    if (cfg.freeze_base or cfg.fine_tune_at is not None) and "freeze_base" in accepted:
        kwargs["freeze_base"] = True
    model = build_model(cfg.arch, input_shape, num_classes, image_size=cfg.image_size, **kwargs)
    if cfg.normalize != "none":
        if input_stats is None and cfg.normalize == "dataset":
            raise KerasDigitsError("--normalize dataset needs the training split's statistics: "
                                   "build_for(..., input_stats=make_datasets(cfg, bundle).input_stats)")
        stats = input_stats or normalization_stats(cfg.normalize, channels=input_shape[-1])
        model = add_input_normalization(model, stats)
    return float32_outputs(model)


def _pretrained_archs() -> list[str]:
    from keras_digits.models import list_models, model_info

    return [n for n in list_models() if model_info(n).pretrained]


def compile_model(model, cfg: TrainConfig, lr: float | None = None) -> None:
    """Compile with the configured optimizer, sparse cross-entropy and accuracy."""
    model.compile(optimizer=make_optimizer(cfg, lr), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"], jit_compile=cfg.jit_compile)


def unfreeze_from(model, layer_index: int) -> int:
    """Make the pretrained base trainable from `layer_index` on (BatchNorm layers stay frozen, as
    Keras' transfer-learning guide advises); returns how many base layers are now trainable."""
    import keras

    try:
        base = model.get_layer("base")
    except ValueError:
        raise KerasDigitsError("--fine-tune-at needs a pretrained family with a 'base' model: "
                               + ", ".join(_pretrained_archs())) from None
    n = len(base.layers)
    if not 0 <= layer_index < n:
        raise KerasDigitsError(f"--fine-tune-at {layer_index} is outside the base's {n} layers (0..{n - 1})")
    base.trainable = True
    for i, layer in enumerate(base.layers):
        layer.trainable = i >= layer_index and not isinstance(layer, keras.layers.BatchNormalization)
    return sum(1 for layer in base.layers[layer_index:] if layer.trainable)


def save_phase_one(model, run_dir: Path) -> int:
    """Keep the model as phase one left it, so that a run killed during phase two resumes there
    instead of training phase one again; returns phase one's epoch count."""
    from keras_digits.report import read_history

    epochs = len(read_history(run_dir / "history.csv").get("epoch", []))
    weights, info = (run_dir / name for name in PHASE_ONE)
    with atomic_path(weights, suffix=".weights.h5") as tmp:
        model.save_weights(tmp)
    write_json(info, {"epochs": epochs})  # written second: it marks phase one as done
    return epochs


def load_phase_one(model, run_dir: Path) -> int | None:
    """Restore a finished phase one (see `save_phase_one`); its epoch count, or None if there is none."""
    weights, info = (run_dir / name for name in PHASE_ONE)
    if not (info.is_file() and weights.is_file()):
        return None
    import warnings

    with warnings.catch_warnings():  # phase two compiles a new optimizer: phase one's state is not wanted
        warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
        model.load_weights(weights)
    return int(read_json_object(info)["epochs"])


def fine_tune(model, cfg: TrainConfig, pipes, run_dir: Path, done: int, strategy) -> None:
    """Second phase: unfreeze the base from --fine-tune-at and train on at a lower learning rate.

    The first phase (cfg.epochs) trained the head with the base frozen; this one runs
    --fine-tune-epochs more (default: as many) at lr x --fine-tune-lr-factor, continuing the same
    history, checkpoint (best by val accuracy over both phases) and TensorBoard log."""
    lr = cfg.lr * cfg.fine_tune_lr_factor
    with strategy.scope():
        n = unfreeze_from(model, cfg.fine_tune_at)
        compile_model(model, cfg, lr=lr)
    if cfg.verbose:
        print(f"fine-tuning: {n} base layers from #{cfg.fine_tune_at} unfrozen, lr {lr:g}")
    callbacks = make_callbacks(cfg, run_dir, resuming=True, backup=FINE_TUNE_BACKUP)  # best so far from history
    extra = cfg.fine_tune_epochs or cfg.epochs
    model.fit(pipes.train, initial_epoch=done, epochs=done + extra, callbacks=callbacks, verbose=cfg.verbose,
              **pipes.fit_kwargs())


def train_and_evaluate(cfg: TrainConfig, run_dir: str | Path, overwrite: bool = False,
                       transform_data=None) -> dict:
    """Train `cfg` into `run_dir` and score it; returns metrics ({"val": ..., "test": ...}).

    `transform_data(bundle) -> bundle` may change the loaded splits first (the balancing study's
    long-tailed training subset); dataset.json records the resulting sizes."""
    quiet_tensorflow()
    from keras_digits.data import load_for
    from keras_digits.data.datasets import make_datasets
    from keras_digits.evaluate import evaluate_model
    from keras_digits.report import metrics_markdown, plot_confusion, plot_curves, read_history, write_markdown
    from keras_digits.strategy import get_strategy, replicas

    run_dir = Path(run_dir)
    strategy = get_strategy(cfg.strategy, cfg.verbose)  # first: may split the CPU before TF sets up devices
    setup_runtime(cfg)
    bundle = load_for(cfg)
    if transform_data is not None:
        bundle = transform_data(bundle)
    pipes = make_datasets(cfg, bundle, replicas=replicas(strategy))
    with strategy.scope():
        model = build_for(cfg, bundle.input_shape, bundle.num_classes, pipes.input_stats)  # fails before any file
        compile_model(model, cfg)
    final_dir, run_dir = run_dir, staging_dir(run_dir, overwrite)
    resuming = prepare_run_dir(run_dir, cfg)
    write_json(run_dir / "config.json", cfg.to_dict())
    write_json(run_dir / "dataset.json", {
        "name": bundle.name, "source": bundle.source, "input_shape": list(bundle.input_shape),
        "num_classes": bundle.num_classes, "label_names": list(bundle.label_names),
        "sizes": {s: int(len(bundle.split(s)[1])) for s in ("train", "val", "test")},
    })
    (x_tr, y_tr), (x_va, y_va) = bundle.train, bundle.val
    if cfg.verbose:
        print(f"{cfg.arch} on {bundle.name}: train {len(y_tr)}, val {len(y_va)}, test {len(bundle.test[1])} "
              f"images {bundle.input_shape}, {model.count_params():,} parameters; run dir {run_dir}"
              + (" (resuming)" if resuming else ""))
    start = time.perf_counter()
    phase_one = load_phase_one(model, run_dir) if cfg.fine_tune_at is not None and resuming else None
    if phase_one is None:
        callbacks = make_callbacks(cfg, run_dir, resuming)
        model.fit(pipes.train, epochs=cfg.epochs, callbacks=callbacks, verbose=cfg.verbose, **pipes.fit_kwargs())
    elif cfg.verbose:
        print(f"phase one done earlier ({phase_one} epochs): resuming the fine-tuning phase")
    if cfg.fine_tune_at is not None:
        if phase_one is None:
            phase_one = save_phase_one(model, run_dir)
        fine_tune(model, cfg, pipes, run_dir, phase_one, strategy)
        for name in PHASE_ONE:
            (run_dir / name).unlink(missing_ok=True)
    seconds = time.perf_counter() - start
    best = run_dir / "best.keras"
    if not best.exists():
        raise KerasDigitsError("training produced no finite validation accuracy (diverged?); no model saved")
    from keras_digits.evaluate import load_run

    _, model = load_run(run_dir)
    metrics: dict[str, Any] = {"val": evaluate_model(model, x_va, y_va, bundle.label_names)}
    if cfg.evaluate_test:
        metrics["test"] = evaluate_model(model, *bundle.test, bundle.label_names)
    history = read_history(run_dir / "history.csv")
    metrics["train_seconds"] = seconds
    metrics["epochs_run"] = len(history.get("loss", []))
    final = "test" if "test" in metrics else "val"
    plot_confusion(np.asarray(metrics[final]["confusion_matrix"]), bundle.label_names,
                   run_dir / "confusion_matrix.png", title=f"{cfg.arch} on {bundle.name} ({final})")
    plot_curves(history, run_dir / "curves.png", title=f"{cfg.arch} on {bundle.name}")
    write_markdown(run_dir / "report.md", metrics_markdown(metrics, f"{cfg.arch} on {bundle.name}"))
    write_json(run_dir / "metrics.json", metrics)  # written last: its presence marks a finished run
    if run_dir != final_dir:
        replace_dir(run_dir, final_dir)
    return metrics


# ---------------------------------------------------------------------------- CLI
def _bool_flag(p, name: str, help: str) -> None:
    p.add_argument(f"--{name}", dest=name.replace("-", "_"), action=argparse.BooleanOptionalAction,
                   default=argparse.SUPPRESS, help=help)


def build_parser() -> argparse.ArgumentParser:
    """The train CLI; every option defaults to TrainConfig's value (config file < flags)."""
    from keras_digits.augment import SPEC_HELP as AUGMENT_HELP
    from keras_digits.data import list_datasets
    from keras_digits.models import list_models

    d = TrainConfig()
    S = argparse.SUPPRESS
    p = argparse.ArgumentParser(
        prog="python -m keras_digits.train",
        description="Train and evaluate an image classifier; writes config, history, best model, "
                    "TensorBoard logs, metrics and plots into a run directory.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    g = p.add_argument_group("what to train")
    g.add_argument("--arch", default=S, help=f"architecture ({d.arch}); one of: {', '.join(list_models())}")
    g.add_argument("--dataset", default=S, help=f"dataset ({d.dataset}); one of: {', '.join(list_datasets())}")
    g.add_argument("--data-dir", default=S, help="folder holding the dataset's standard file(s) "
                   "(default $KERAS_DIGITS_DATA, then library caches, then download)")
    g.add_argument("--image-size", type=positive_int, default=S, help="working resolution (default: per arch)")
    g.add_argument("--val-split", type=fraction, default=S,
                   help=f"validation fraction carved from train where no official split exists ({d.val_split})")
    g.add_argument("--max-train-samples", type=positive_int, default=S, help="stratified training subset (quick runs)")
    g.add_argument("--model-kwargs", type=json.loads, default=S,
                   help='JSON object of architecture options, e.g. \'{"batch_norm": false}\'')
    g = p.add_argument_group("how to train")
    g.add_argument("--epochs", type=positive_int, default=S, help=f"maximum epochs ({d.epochs})")
    g.add_argument("--batch-size", type=positive_int, default=S, help=f"batch size ({d.batch_size})")
    g.add_argument("--lr", type=positive_float, default=S, help=f"learning rate ({d.lr})")
    g.add_argument("--optimizer", choices=OPTIMIZERS, default=S, help=f"optimizer ({d.optimizer})")
    g.add_argument("--momentum", type=float, default=S, help=f"SGD momentum ({d.momentum})")
    g.add_argument("--weight-decay", type=float, default=S, help=f"weight decay ({d.weight_decay})")
    g.add_argument("--schedule", choices=SCHEDULES, default=S, help=f"learning-rate schedule ({d.schedule})")
    g.add_argument("--warmup-epochs", type=int, default=S, help=f"cosine warm-up epochs ({d.warmup_epochs})")
    g.add_argument("--patience", type=int, default=S, help=f"early-stopping patience in epochs ({d.patience})")
    _bool_flag(p, "early-stopping", f"stop when val accuracy stalls ({d.early_stopping})")
    g.add_argument("--balance", choices=BALANCES, default=S, help=f"class balancing ({d.balance})")
    g.add_argument("--augment", default=S, help=f"{AUGMENT_HELP} ({d.augment})")
    g.add_argument("--normalize", choices=NORMALIZES, default=S, help=f"input normalisation ({d.normalize})")
    g.add_argument("--weights", default=S, help="none | imagenet | PATH (pretrained families)")
    _bool_flag(p, "freeze-base", "train the head with the pretrained base frozen")
    g.add_argument("--fine-tune-at", type=int, default=S,
                   help="two phases: --epochs with the base frozen, then unfreeze base layers from N on")
    g.add_argument("--fine-tune-epochs", type=positive_int, default=S, help="epochs of the second phase (--epochs)")
    g.add_argument("--fine-tune-lr-factor", type=positive_float, default=S,
                   help=f"second-phase learning rate = lr x this ({d.fine_tune_lr_factor})")
    g = p.add_argument_group("runtime")
    g.add_argument("--seed", type=int, default=S, help=f"random seed ({d.seed})")
    _bool_flag(p, "deterministic", "TF op determinism: identical metrics for one seed on CPU")
    _bool_flag(p, "mixed-precision", "mixed_float16 on GPU")
    g.add_argument("--strategy", choices=STRATEGIES, default=S, help=f"distribution strategy ({d.strategy})")
    _bool_flag(p, "jit-compile", f"XLA compilation ({d.jit_compile}; slower on CPU)")
    _bool_flag(p, "evaluate-test", "score the test split at the end")
    g.add_argument("--verbose", type=int, choices=(0, 1, 2), default=S, help="Keras fit verbosity (1 = progress bar)")
    g = p.add_argument_group("files")
    g.add_argument("--config", default=S, help="JSON file of options (a run's config.json or best_config.json); "
                   "flags given on the command line win")
    g.add_argument("--run-dir", default=S, help="output folder (default runs/<dataset>-<arch>-s<seed>)")
    g.add_argument("--overwrite", action="store_true", help="replace a finished run in --run-dir")
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Defaults < config file < flags."""
    given = vars(args).copy()
    data: dict[str, Any] = {}
    if "config" in given:
        data.update(load_config_file(given.pop("config")))
    given.pop("run_dir", None)
    given.pop("overwrite", None)
    data.update(given)
    if "model_kwargs" in data and not isinstance(data["model_kwargs"], dict):
        raise KerasDigitsError("--model-kwargs must be a JSON object")
    return TrainConfig.from_dict(data)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    cfg = config_from_args(args)
    run_dir = Path(args.run_dir) if getattr(args, "run_dir", None) else default_run_dir(cfg)
    metrics = train_and_evaluate(cfg, run_dir, overwrite=args.overwrite)
    for split in ("val", "test"):
        if split in metrics:
            m = metrics[split]
            auc = "" if m["auc"] is None else f", auc {m['auc']:.4f}"
            print(f"{split} accuracy: {m['accuracy']:.4f} (loss {m['loss']:.4f}, macro-F1 {m['f1']:.4f}{auc})")
    print(f"run saved to {run_dir} ({metrics['epochs_run']} epochs, {metrics['train_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
