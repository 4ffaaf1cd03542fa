"""The run directory: where a run goes, whether it is finished, diverged or interrupted, and the
`--overwrite` staging folder.

A run's `metrics.json` is written last and marks it as ended: either finished (it holds the scores)
or diverged (`"status": "diverged"`, with where it diverged; such a run keeps no model).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from keras_digits.config import TrainConfig, comparable, sized_name
from keras_digits.errors import KerasDigitsError, TrainingDiverged
from keras_digits.evaluation.records import (
    divergence_text,
    ended,
    is_diverged,
)
from keras_digits.utils.io import read_json_object, write_json

RUNS_DIR = Path("runs")
INTERRUPTED_MARKERS = ("backup", "backup-fine-tune", "phase1.json", "trained.json")  # left by a run that did not end


def same_config(run_dir: Path, cfg: TrainConfig) -> bool:
    """Whether `run_dir/config.json` holds `cfg` (verbosity aside)."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        return False
    return comparable(read_json_object(path)) == comparable(cfg.to_dict())


def default_run_dir(cfg: TrainConfig, root: Path = RUNS_DIR) -> Path:
    """runs/<dataset>[_<size>]-<arch>-s<seed>[-N] (size: a MedMNIST --size other than 28): the first
    such folder that does not hold an ended run, so
    rerunning an interrupted command resumes it and a finished run is never overwritten; a run of
    the same config that diverged is returned too, so rerunning it reports that instead of training
    the same divergence again in a new folder."""
    base = root / f"{sized_name(cfg.dataset, cfg.size)}-{cfg.arch}-s{cfg.seed}"
    candidate, n = base, 1
    while (metrics := ended(candidate)) is not None:
        if is_diverged(metrics) and same_config(candidate, cfg):
            return candidate
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    return candidate


def staging_dir(run_dir: Path, overwrite: bool) -> Path:
    """Where to train: `run_dir` itself, or, when --overwrite replaces an ended run there, a sibling
    `<name>.overwrite` that replaces it only once the new run has finished, so that a failed or
    interrupted rerun leaves the old run whole (and a repeated --overwrite resumes it)."""
    metrics = ended(run_dir)
    if overwrite and run_dir.is_symlink() and (metrics is not None or interrupted(run_dir)):
        raise KerasDigitsError(
            f"run directory {run_dir} is a symbolic link (to {run_dir.resolve()}); --overwrite replaces only a real "
            f"folder, never through a link: pass --run-dir {run_dir.resolve()} to replace the run there"
        )
    if metrics is None:
        if overwrite and interrupted(run_dir):  # --overwrite replaces an interrupted run too: start it over
            shutil.rmtree(run_dir)
        return run_dir
    if not overwrite:
        if is_diverged(metrics):
            raise TrainingDiverged(
                f"{run_dir} holds a run that diverged at {divergence_text(metrics)}; use another "
                "--run-dir (with other settings, e.g. a lower --lr) or pass --overwrite"
            )
        raise KerasDigitsError(f"{run_dir} already holds a finished run; pass --overwrite or another --run-dir")
    staged = run_dir.with_name(run_dir.name + ".overwrite")
    if staged.is_symlink():  # our own scratch name: remove the link itself, never what it points to
        staged.unlink()
    elif ended(staged) is not None:  # ended but never swapped in (killed in between, or diverged): start over
        shutil.rmtree(staged)
    return staged


def interrupted(run_dir: Path) -> bool:
    """Whether `run_dir` holds a run that started and did not end."""
    return any((Path(run_dir) / name).exists() for name in INTERRUPTED_MARKERS)


def prepare_run_dir(run_dir: Path, cfg: TrainConfig) -> bool:
    """Create or check `run_dir`, which holds no ended run (`staging_dir` chose it); True when an
    interrupted run will resume."""
    resuming = interrupted(run_dir)
    if resuming and (run_dir / "config.json").is_file() and not same_config(run_dir, cfg):
        raise KerasDigitsError(
            f"{run_dir} holds an interrupted run with a different config; pass --overwrite or another --run-dir"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    return resuming


def record_divergence(run_dir: Path, where: dict[str, Any], epochs_run: int, seconds: float) -> dict[str, Any]:
    """End a diverged run: no model kept (its weights are not finite, or it stopped short), metrics.json
    says where it diverged, so a rerun of the same command reports it instead of looping."""
    for name in ("best.keras", *INTERRUPTED_MARKERS, "phase1.weights.h5"):
        path = run_dir / name
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    metrics = {"status": "diverged", "diverged": where, "epochs_run": epochs_run, "train_seconds": seconds}
    write_json(run_dir / "metrics.json", metrics)
    return metrics


def software_versions() -> dict[str, str]:
    """What the run was trained with (environment.json): Python, the main libraries, the machine."""
    import platform
    from importlib import metadata

    out = {
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
        "processor": platform.processor() or platform.machine(),
    }
    for package in ("tensorflow", "keras", "numpy", "scikit-learn", "keras-tuner"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return out


def multiworker_dir(cfg: TrainConfig, run_dir: Path, task, overwrite: bool) -> Path:
    """Where this worker trains: the chief in the run directory, the others in a private sibling
    `.<name>.<type>-<index>` (their checkpoints and logs, kept only for resuming). Whether the run can
    start (a finished run without --overwrite, a held lock) is the chief's to say: RunRole.start tells every
    worker (keras_digits.training.distributed_fit.agreed_start)."""
    if task.is_chief:
        return run_dir
    return run_dir.parent / f".{run_dir.name}.{task.type}-{task.index}"
