"""A training run end to end: `train_and_evaluate(cfg, run_dir)` fits (both phases), scores and publishes."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import numpy as np

from keras_digits.config import TrainConfig
from keras_digits.errors import KerasDigitsError, TrainingDiverged
from keras_digits.training.callbacks import (
    FINE_TUNE_BACKUP,
    diverged_at,
    make_callbacks,
)
from keras_digits.training.role import RunRole
from keras_digits.training.rundir import (
    divergence_text,
    prepare_run_dir,
    record_divergence,
    software_versions,
    staging_dir,
)
from keras_digits.training.setup import build_for, check_fits_in_memory, compile_model, setup_runtime, unfreeze_from
from keras_digits.utils.cli import quiet_tensorflow
from keras_digits.utils.io import (
    atomic_path,
    check_output_dir,
    clean_stale_temps,
    read_json_object,
    replace_dir,
    write_json,
)
from keras_digits.utils.lock import hold

PHASE_ONE = "phase1.weights.h5", "phase1.json"  # the model after phase one, while phase two runs


TRAINED = "trained.json"  # training ended, scoring not yet done: a rerun only scores


def save_phase_one(model, run_dir: Path) -> int:
    """Keep the model as phase one left it, so that a run killed during phase two resumes there
    instead of training phase one again; returns phase one's epoch count."""
    from keras_digits.reporting.history import read_history

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


def watchers(model, cfg: TrainConfig, pipes, role: RunRole) -> dict:
    """make_callbacks' precise BatchNorm recalibration (as --precise-bn resolves for this model and phase)
    and collapse detector."""
    from keras_digits.training.collapse import SAMPLE
    from keras_digits.training.precise_bn import make_recalibrator, plan_precise_bn

    plan = plan_precise_bn(cfg.precise_bn, model, role.steps_per_epoch(pipes, cfg.batch_size), cfg.batch_size)
    if plan.batches and cfg.verbose:
        print(f"precise BatchNorm before each validation: {plan.reason}")
    recalibrate = make_recalibrator(plan, model, pipes, cfg.batch_size)
    return {"precise_bn": recalibrate, "watch": (*pipes.check_sample(SAMPLE), pipes.val_labels)}


def fine_tune(model, cfg: TrainConfig, pipes, run_dir: Path, done: int, role: RunRole) -> dict | None:
    """Second phase: unfreeze the base from --fine-tune-at and train on at a lower learning rate.

    The first phase (cfg.epochs) trained the head with the base frozen; this one runs
    --fine-tune-epochs more (default: as many) at lr x --fine-tune-lr-factor, continuing the same
    history, checkpoint (best by --select-on over both phases) and TensorBoard log. Returns where
    it diverged, or None."""
    lr = cfg.lr * cfg.fine_tune_lr_factor
    with role.strategy.scope():
        n = unfreeze_from(model, cfg.fine_tune_at)
        compile_model(
            model, cfg, lr=lr, steps_per_epoch=role.steps_per_epoch(pipes, cfg.batch_size), epochs=cfg.fine_tune_epochs
        )
    if cfg.verbose:
        print(f"fine-tuning: {n} base layers from #{cfg.fine_tune_at} unfrozen, lr {lr:g}")
    callbacks = make_callbacks(
        cfg,
        run_dir,
        resuming=True,  # the best so far comes from the history
        backup=FINE_TUNE_BACKUP,
        epoch_var=pipes.epoch,
        first_epoch=done,
        ended=run_dir / TRAINED,
        val=(pipes.val, pipes.val_labels),
        auc_in_logs=role.logs_auc,
        **watchers(model, cfg, pipes, role),  # phase two's trainable BatchNorm layers
    )
    role.fit(model, cfg, pipes, callbacks, epochs=done + (cfg.fine_tune_epochs or cfg.epochs), initial_epoch=done)
    return diverged_at(callbacks)


def fit_phases(model, cfg: TrainConfig, pipes, run_dir: Path, resuming: bool, role: RunRole) -> dict | None:
    """Train (both phases with --fine-tune-at), resuming where an interrupted run stopped; returns
    where training diverged, or None. A run whose training ended (TRAINED written) is not trained again."""
    if role.chief_decides(resuming and (run_dir / TRAINED).is_file()):
        if cfg.verbose:
            print("training finished earlier: scoring the saved best model")
        return None
    phase_one = load_phase_one(model, run_dir) if cfg.fine_tune_at is not None and resuming else None
    if phase_one is None:
        callbacks = make_callbacks(
            cfg,
            run_dir,
            resuming,
            epoch_var=pipes.epoch,
            ended=run_dir / TRAINED if cfg.fine_tune_at is None else None,
            val=(pipes.val, pipes.val_labels),
            auc_in_logs=role.logs_auc,
            **watchers(model, cfg, pipes, role),
        )
        role.fit(model, cfg, pipes, callbacks, epochs=cfg.epochs)
        if (where := diverged_at(callbacks)) is not None:
            return where
    elif cfg.verbose:
        print(f"phase one done earlier ({phase_one} epochs): resuming the fine-tuning phase")
    if cfg.fine_tune_at is not None:
        if phase_one is None:
            phase_one = save_phase_one(model, run_dir)
        if (where := fine_tune(model, cfg, pipes, run_dir, phase_one, role)) is not None:
            return where
        for name in PHASE_ONE:
            (run_dir / name).unlink(missing_ok=True)
    return None  # TRAINED was written by the last fit's TrainingEnded callback


def score_run(cfg: TrainConfig, bundle, run_dir: Path) -> dict:
    """Score the run's best model on val (and test); write the predictions the report needs, report.md,
    metrics.json (it marks the run finished), then the plots, report.html and TensorBoard images (a plot
    that fails is a warning, never a lost score)."""
    from keras_digits.data import get_spec
    from keras_digits.evaluation.metrics import evaluate_model
    from keras_digits.evaluation.runs import load_run
    from keras_digits.reporting.history import read_history
    from keras_digits.reporting.html import write_run_page
    from keras_digits.reporting.markdown import metrics_markdown, write_markdown
    from keras_digits.reporting.plots import plot_confusion, plot_curves, try_plot
    from keras_digits.reporting.tb_images import log_result_images

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
        from keras_digits.evaluation.medmnist_protocol import protocol_block, protocol_line

        metrics["medmnist"] = protocol_block(
            run_dir, cfg.dataset, cfg.size, spec.task, [s for s in ("val", "test") if s in metrics]
        )
        text += "\n" + protocol_line(metrics["medmnist"]) + "\n"
    from keras_digits.reporting.result_files import read_collapse

    if collapse := read_collapse(run_dir):
        epochs = ", ".join(str(e.get("epoch")) for e in collapse["epochs"] if isinstance(e, dict))
        text += f"\n**Collapse warning**: the collapse detector fired at epoch(s) {epochs}: {collapse.get('advice')}\n"
    write_markdown(run_dir / "report.md", text)
    write_json(run_dir / "metrics.json", metrics)  # its presence marks a finished run; plots come after, non-fatal
    try_plot(
        "confusion matrix",
        lambda: plot_confusion(
            np.asarray(metrics[final]["confusion_matrix"]),
            bundle.label_names,
            run_dir / "confusion_matrix.png",
            title=f"{cfg.arch} on {bundle.name} ({final})",
        ),
    )
    try_plot(
        "learning curves", lambda: plot_curves(history, run_dir / "curves.png", title=f"{cfg.arch} on {bundle.name}")
    )
    write_run_page(run_dir)
    try_plot(
        "TensorBoard results", lambda: log_result_images(run_dir, final, bundle.label_names, step=metrics["epochs_run"])
    )
    (run_dir / TRAINED).unlink(missing_ok=True)
    return metrics


def train_and_evaluate(cfg: TrainConfig, run_dir: str | Path, overwrite: bool = False, transform_data=None) -> dict:
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

    # check
    final_dir = check_output_dir(Path(run_dir), "run directory")
    check_fits_in_memory(cfg)
    role = RunRole.for_config(cfg)  # first: it may split the CPU before TensorFlow sets up its devices
    cfg = setup_runtime(cfg, cfg.verbose)  # recorded resolved in config.json
    role.check(cfg)
    final_dir = role.training_dir(cfg, final_dir, overwrite)
    # load
    bundle = load_for(cfg)
    if transform_data is not None:
        bundle = transform_data(bundle)
    pipes = make_datasets(cfg, bundle, replicas=role.replicas, epoch=epoch_variable())  # see EpochRandomState
    present = len(np.unique(pipes.val_labels))
    if cfg.select_on == "auc" and present < bundle.num_classes:
        raise KerasDigitsError(
            f"--select-on auc needs every class in the validation split; it holds {present} "
            f"of {bundle.num_classes}: raise --val-split or select on accuracy"
        )
    # build
    with role.strategy.scope():
        model = build_for(cfg, bundle.input_shape, bundle.num_classes, pipes.input_stats)  # fails before any file
        compile_model(model, cfg, steps_per_epoch=role.steps_per_epoch(pipes, cfg.batch_size))
    with contextlib.ExitStack() as stack:
        # open the run
        def start() -> tuple[Path, bool]:
            stack.enter_context(hold(final_dir, "run directory"))
            return (staged := staging_dir(final_dir, overwrite)), prepare_run_dir(staged, cfg)

        run_dir, resuming = role.start(start)
        clean_stale_temps(run_dir)
        write_json(run_dir / "config.json", cfg.to_dict())
        write_json(run_dir / "dataset.json", dataset_record(bundle))
        write_json(run_dir / "environment.json", software_versions())
        if cfg.verbose:
            print(
                f"{cfg.arch} on {bundle.name}: train {len(bundle.train[1])}, val {len(bundle.val[1])}, "
                f"test {len(bundle.test[1])} images {bundle.input_shape}, {model.count_params():,} parameters; "
                f"run dir {run_dir}" + (" (resuming)" if resuming else "")
            )
        # fit
        where = fit_phases(model, cfg, pipes, run_dir, resuming, role)
        if where is not None:
            raise_diverged(run_dir, where)
        if not role.training_ended(model, run_dir):
            return {}  # a non-chief worker: the chief keeps, scores and publishes the run
        # score, publish
        metrics = score_run(cfg, bundle, run_dir)
        if run_dir != final_dir:
            replace_dir(run_dir, final_dir)
        role.published()
    return metrics


def raise_diverged(run_dir: Path, where: dict) -> None:
    """Record the run as diverged (metrics.json, no model kept) and raise TrainingDiverged."""
    from keras_digits.reporting.history import read_history

    history = read_history(run_dir / "history.csv")
    metrics = record_divergence(
        run_dir, where, len(history.get("loss", [])), float(np.nansum(history.get("epoch_seconds", [])))
    )
    raise TrainingDiverged(
        f"training diverged at {divergence_text(metrics)}; no model kept, recorded in "
        f"{run_dir / 'metrics.json'}; try a lower --lr"
    )
