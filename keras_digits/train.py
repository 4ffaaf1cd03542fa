"""Training: `train_and_evaluate(cfg, run_dir)` and the `python -m keras_digits.train` CLI."""

from __future__ import annotations

import argparse
import contextlib
import shutil
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from keras_digits.cli import quiet_tensorflow, run_cli
from keras_digits.config import TrainConfig
from keras_digits.flags import FILES, add_train_flags, config_from_args  # noqa: F401  (config_from_args: API)
from keras_digits.callbacks import (  # noqa: F401  (schedule_* re-exported: train is where users look)
    FINE_TUNE_BACKUP, diverged_at, make_callbacks, schedule_callbacks, schedule_lr,
)
from keras_digits.errors import KerasDigitsError, TrainingDiverged
from keras_digits.io import atomic_path, check_output_dir, clean_stale_temps, read_json_object, replace_dir, write_json
from keras_digits.lock import hold
from keras_digits.rundir import (  # noqa: F401  (default_run_dir re-exported for the CLI and tests)
    default_run_dir, divergence_text, prepare_run_dir, record_divergence, software_versions, staging_dir,
)

PHASE_ONE = "phase1.weights.h5", "phase1.json"  # the model after phase one, while phase two runs
TRAINED = "trained.json"  # training ended, scoring not yet done: a rerun only scores


# ---------------------------------------------------------------------------- the seam
def setup_runtime(cfg: TrainConfig, verbose: int = 0) -> TrainConfig:
    """Seeds, determinism and the precision policy (keras_digits.precision); returns `cfg` with its
    precision resolved (auto -> what this machine runs best)."""
    import keras
    import tensorflow as tf

    from keras_digits import precision

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
        stats = input_stats if cfg.normalize == "dataset" else imagenet_stats(input_shape[-1])
        model = add_input_normalization(model, stats)
    return float32_outputs(model)


def _pretrained_archs() -> list[str]:
    from keras_digits.models import list_models, model_info

    return [n for n in list_models() if model_info(n).pretrained]


def compile_model(model, cfg: TrainConfig, lr: float | None = None, steps_per_epoch: int | None = None,
                  epochs: int | None = None) -> None:
    """Compile with the configured optimizer (a per-step schedule over `epochs` x `steps_per_epoch`
    steps for --schedule onecycle), sparse cross-entropy (label-smoothed if asked) and accuracy."""
    from keras_digits.optim import make_loss, make_optimizer  # imports keras: not at module level (quiet start-up)

    model.compile(optimizer=make_optimizer(cfg, lr, steps_per_epoch, epochs), loss=make_loss(cfg),
                  metrics=["accuracy"], jit_compile=cfg.jit_compile, steps_per_execution=cfg.steps_per_execution)


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


def fine_tune(model, cfg: TrainConfig, pipes, run_dir: Path, done: int, strategy) -> dict | None:
    """Second phase: unfreeze the base from --fine-tune-at and train on at a lower learning rate.

    The first phase (cfg.epochs) trained the head with the base frozen; this one runs
    --fine-tune-epochs more (default: as many) at lr x --fine-tune-lr-factor, continuing the same
    history, checkpoint (best by --select-on over both phases) and TensorBoard log. Returns where
    it diverged, or None."""
    lr = cfg.lr * cfg.fine_tune_lr_factor
    with strategy.scope():
        n = unfreeze_from(model, cfg.fine_tune_at)
        compile_model(model, cfg, lr=lr, steps_per_epoch=pipes.steps_per_epoch, epochs=cfg.fine_tune_epochs)
    if cfg.verbose:
        print(f"fine-tuning: {n} base layers from #{cfg.fine_tune_at} unfrozen, lr {lr:g}")
    callbacks = make_callbacks(cfg, run_dir, resuming=True, backup=FINE_TUNE_BACKUP,  # best so far from history
                               epoch_var=pipes.epoch, first_epoch=done, ended=run_dir / TRAINED,
                               val=(pipes.val, pipes.val_labels))
    extra = cfg.fine_tune_epochs or cfg.epochs
    model.fit(pipes.train, initial_epoch=done, epochs=done + extra, callbacks=callbacks, verbose=cfg.verbose,
              **pipes.fit_kwargs())
    return diverged_at(callbacks)


def fit_phases(model, cfg: TrainConfig, pipes, run_dir: Path, resuming: bool, strategy) -> dict | None:
    """Train (both phases with --fine-tune-at), resuming where an interrupted run stopped; returns
    where training diverged, or None. A run whose training ended (TRAINED written) is not trained again."""
    from keras_digits.strategy import replicas, worker_task

    task = worker_task(strategy)
    trained = resuming and (run_dir / TRAINED).is_file()
    if task is not None:  # the chief's run decides (a worker's own folder may be older or gone)
        from keras_digits.distributed_fit import chief_values

        trained = bool(chief_values(strategy, task.is_chief, [float(trained)])[0])
    if trained:
        if cfg.verbose:
            print("training finished earlier: scoring the saved best model")
        return None
    phase_one = load_phase_one(model, run_dir) if cfg.fine_tune_at is not None and resuming else None
    if phase_one is None:
        multi = task is not None
        callbacks = make_callbacks(cfg, run_dir, resuming, epoch_var=pipes.epoch,
                                   ended=run_dir / TRAINED if cfg.fine_tune_at is None else None,
                                   val=(pipes.val, pipes.val_labels), auc_in_logs=multi)
        if multi:  # Keras 3's fit fails under MultiWorkerMirroredStrategy: the same callbacks, a custom loop
            from keras_digits.distributed_fit import distributed_fit

            distributed_fit(model, strategy, pipes, callbacks, epochs=cfg.epochs, n_train=pipes.n_train,
                            global_batch=cfg.batch_size * replicas(strategy), is_chief=task.is_chief,
                            select_on=cfg.select_on, verbose=cfg.verbose)
        else:
            model.fit(pipes.train, epochs=cfg.epochs, callbacks=callbacks, verbose=cfg.verbose,
                      **pipes.fit_kwargs())
        if (where := diverged_at(callbacks)) is not None:
            return where
    elif cfg.verbose:
        print(f"phase one done earlier ({phase_one} epochs): resuming the fine-tuning phase")
    if cfg.fine_tune_at is not None:
        if phase_one is None:
            phase_one = save_phase_one(model, run_dir)
        if (where := fine_tune(model, cfg, pipes, run_dir, phase_one, strategy)) is not None:
            return where
        for name in PHASE_ONE:
            (run_dir / name).unlink(missing_ok=True)
    return None  # TRAINED was written by the last fit's TrainingEnded callback


def score_run(cfg: TrainConfig, bundle, run_dir: Path) -> dict:
    """Score the run's best model on val (and test); write the predictions the report needs, report.md,
    metrics.json (it marks the run finished), then the plots, report.html and TensorBoard images (a plot
    that fails is a warning, never a lost score)."""
    from keras_digits.evaluate import evaluate_model, load_run
    from keras_digits.html_report import write_run_page
    from keras_digits.report import (
        metrics_markdown, plot_confusion, plot_curves, read_history, try_plot, write_markdown,
    )
    from keras_digits.tb_images import log_result_images
    from keras_digits.data import get_spec

    if not (run_dir / "best.keras").exists():
        raise KerasDigitsError(f"training produced no finite validation {cfg.select_on}; no model saved")
    _, model = load_run(run_dir, finished=False)
    metrics: dict[str, Any] = {"status": "finished"}
    for split in ("val", "test") if cfg.evaluate_test else ("val",):
        x, y = bundle.split(split)
        metrics[split] = evaluate_model(model, x, y, bundle.label_names, keep=(run_dir, split))
    history = read_history(run_dir / "history.csv")
    metrics["train_seconds"] = float(np.nansum(history.get("epoch_seconds", [])))
    metrics["epochs_run"] = len(history.get("loss", []))
    final = "test" if "test" in metrics else "val"
    text = metrics_markdown(metrics, f"{cfg.arch} on {bundle.name}")
    spec = get_spec(cfg.dataset)
    if spec.source == "medmnist-npz":  # the benchmark's own ACC and AUC, to set the run beside its table
        from keras_digits.medmnist_protocol import protocol_block, protocol_line

        metrics["medmnist"] = protocol_block(run_dir, cfg.dataset, cfg.size, spec.task,
                                             [s for s in ("val", "test") if s in metrics])
        text += "\n" + protocol_line(metrics["medmnist"]) + "\n"
    write_markdown(run_dir / "report.md", text)
    write_json(run_dir / "metrics.json", metrics)  # its presence marks a finished run; plots come after, non-fatal
    try_plot("confusion matrix", lambda: plot_confusion(np.asarray(metrics[final]["confusion_matrix"]),
                                                        bundle.label_names, run_dir / "confusion_matrix.png",
                                                        title=f"{cfg.arch} on {bundle.name} ({final})"))
    try_plot("learning curves", lambda: plot_curves(history, run_dir / "curves.png",
                                                    title=f"{cfg.arch} on {bundle.name}"))
    write_run_page(run_dir)
    try_plot("TensorBoard results", lambda: log_result_images(run_dir, final, bundle.label_names,
                                                              step=metrics["epochs_run"]))
    (run_dir / TRAINED).unlink(missing_ok=True)
    return metrics


def train_and_evaluate(cfg: TrainConfig, run_dir: str | Path, overwrite: bool = False,
                       transform_data=None) -> dict:
    """Train `cfg` into `run_dir` and score it; returns metrics ({"val": ..., "test": ...}).

    The run directory is held by this process alone (a lock beside it). A run whose loss or weights
    stop being finite ends as diverged: recorded in metrics.json, no model kept, TrainingDiverged
    raised. `transform_data(bundle) -> bundle` may change the loaded splits first (the balancing
    study's long-tailed training subset); dataset.json records the resulting sizes. Keras' global
    dtype policy is set for the run (--precision) and restored when it ends."""
    quiet_tensorflow()
    import keras

    previous = keras.mixed_precision.global_policy()
    try:
        return _train_and_evaluate(cfg, Path(run_dir), overwrite, transform_data)
    finally:
        keras.mixed_precision.set_global_policy(previous)


def _train_and_evaluate(cfg: TrainConfig, run_dir: Path, overwrite: bool, transform_data) -> dict:
    from keras_digits.data import load_for
    from keras_digits.data.datasets import make_datasets
    from keras_digits.data.fingerprint import dataset_record
    from keras_digits.data.pipeline import epoch_variable
    from keras_digits.distributed_fit import agreed_start
    from keras_digits.strategy import get_strategy, replicas, worker_task

    final_dir = check_output_dir(Path(run_dir), "run directory")
    check_fits_in_memory(cfg)
    strategy = get_strategy(cfg.strategy, cfg.verbose, cfg.worker_wait)  # first: may split the CPU before TF's devices
    task = worker_task(strategy)
    if task is not None:
        from keras_digits.rundir import multiworker_dir

        final_dir = multiworker_dir(cfg, final_dir, task, overwrite)
    cfg = setup_runtime(cfg, cfg.verbose)  # recorded resolved in config.json
    if task is not None and cfg.precision == "float16":  # loss scaling decides per worker: they could part ways
        raise KerasDigitsError("--precision float16 is not supported with --strategy multiworker: use bfloat16")
    bundle = load_for(cfg)
    if transform_data is not None:
        bundle = transform_data(bundle)
    pipes = make_datasets(cfg, bundle, replicas=replicas(strategy), epoch=epoch_variable())  # see EpochRandomState
    present = len(np.unique(pipes.val_labels))
    if cfg.select_on == "auc" and present < bundle.num_classes:
        raise KerasDigitsError(f"--select-on auc needs every class in the validation split; it holds {present} "
                               f"of {bundle.num_classes}: raise --val-split or select on accuracy")
    with strategy.scope():
        model = build_for(cfg, bundle.input_shape, bundle.num_classes, pipes.input_stats)  # fails before any file
        compile_model(model, cfg, steps_per_epoch=pipes.steps_per_epoch if task is None  # multiworker: full batches
                      else pipes.n_train // (cfg.batch_size * replicas(strategy)))
    with contextlib.ExitStack() as stack:
        def start() -> tuple[Path, bool]:  # under multiworker, every worker learns if one of them failed here
            stack.enter_context(hold(final_dir, "run directory"))
            return (staged := staging_dir(final_dir, overwrite)), prepare_run_dir(staged, cfg)

        run_dir, resuming = start() if task is None else agreed_start(strategy, start)
        clean_stale_temps(run_dir)
        write_json(run_dir / "config.json", cfg.to_dict())
        write_json(run_dir / "dataset.json", dataset_record(bundle))
        write_json(run_dir / "environment.json", software_versions())
        if cfg.verbose:
            print(f"{cfg.arch} on {bundle.name}: train {len(bundle.train[1])}, val {len(bundle.val[1])}, "
                  f"test {len(bundle.test[1])} images {bundle.input_shape}, {model.count_params():,} parameters; "
                  f"run dir {run_dir}" + (" (resuming)" if resuming else ""))
        where = fit_phases(model, cfg, pipes, run_dir, resuming, strategy)
        if where is not None:
            from keras_digits.report import read_history

            history = read_history(run_dir / "history.csv")
            metrics = record_divergence(run_dir, where, len(history.get("loss", [])),
                                        float(np.nansum(history.get("epoch_seconds", []))))
            raise TrainingDiverged(f"training diverged at {divergence_text(metrics)}; no model kept, recorded in "
                                   f"{run_dir / 'metrics.json'}; try a lower --lr")
        if task is not None:
            from keras_digits.distributed_fit import all_ok, weights_digest

            print(f"{task.name}: training ended; weights digest {weights_digest(model)}", flush=True)
            if not task.is_chief:  # only the chief keeps and scores the run; this folder was for resuming
                shutil.rmtree(run_dir, ignore_errors=True)
                all_ok(strategy, True)  # wait for the chief to finish scoring
                return {}
        metrics = score_run(cfg, bundle, run_dir)
        if run_dir != final_dir:
            replace_dir(run_dir, final_dir)
        if task is not None:
            all_ok(strategy, True)  # the other workers exit only now
    return metrics


def check_fits_in_memory(cfg: TrainConfig) -> None:
    """Refuse a working size whose training batch cannot fit in this machine's memory (its first layers'
    activations and their gradients: about 64 float32 maps per RGB channel), before any data is loaded:
    --image-size, or the images' own size where that is large (a MedMNIST --size)."""
    side = max(cfg.image_size or 0, cfg.size or 0)
    if not side:
        return  # each arch's default size fits
    import psutil

    needed = cfg.batch_size * side ** 2 * 3 * 4 * 64
    available = psutil.virtual_memory().available
    if needed > available:
        what = f"--image-size {cfg.image_size}" if cfg.image_size == side else f"--size {cfg.size}"
        raise KerasDigitsError(f"{what} with --batch-size {cfg.batch_size} needs about "
                               f"{needed / 2**30:,.1f} GiB for one training batch; {available / 2**30:.1f} GiB are "
                               "free: lower --batch-size" + (" or --image-size" if cfg.image_size else ""))


def peak_rss_bytes() -> int | None:
    """This process's peak resident memory, in bytes (None where the OS does not say)."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # macOS reports bytes, Linux KiB


# ---------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    """The train CLI: the shared training flags (keras_digits.flags) plus --run-dir and --overwrite."""
    p = argparse.ArgumentParser(
        prog="python -m keras_digits.train",
        description="Train and evaluate an image classifier; writes config, history, best model, "
                    "TensorBoard logs, metrics and plots into a run directory.",
    )
    groups = add_train_flags(p)
    groups[FILES].add_argument("--run-dir", default=argparse.SUPPRESS,
                               help="output folder (default: runs/<dataset>-<arch>-s<seed>)")
    groups[FILES].add_argument("--overwrite", action="store_true", help="replace a finished run in --run-dir")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    cfg = config_from_args(args)
    run_dir = Path(args.run_dir) if getattr(args, "run_dir", None) else default_run_dir(cfg)
    metrics = train_and_evaluate(cfg, run_dir, overwrite=args.overwrite)
    if not metrics:  # a multi-worker run's non-chief worker: the chief keeps and scores the run
        print(f"worker done: the chief writes and scores {run_dir}")
        return 0
    for split in ("val", "test"):
        if split in metrics:
            m = metrics[split]
            auc = "" if m["auc"] is None else f", auc {m['auc']:.4f}"
            print(f"{split} accuracy: {m['accuracy']:.4f} (loss {m['loss']:.4f}, macro-F1 {m['f1']:.4f}{auc})")
    if "medmnist" in metrics:
        from keras_digits.medmnist_protocol import protocol_line

        print(protocol_line(metrics["medmnist"]))
    peak = peak_rss_bytes()
    memory = f", peak memory {peak / 2**30:.2f} GiB" if peak else ""
    print(f"run saved to {run_dir} ({metrics['epochs_run']} epochs, {metrics['train_seconds']:.0f} s{memory})")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
