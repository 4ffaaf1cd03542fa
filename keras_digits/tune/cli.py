"""`python -m keras_digits.tune`: the search CLI (single process, chief or worker); see docs/tuning.md,
"Hyperparameter search"."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from keras_digits.config import TrainConfig, sized_name
from keras_digits.errors import KerasDigitsError
from keras_digits.training.flags import FILES, add_train_flags, given_options
from keras_digits.utils.cli import positive_int, quiet_tensorflow
from keras_digits.utils.io import check_output_dir, read_json_object, write_json
from keras_digits.utils.lock import hold

TUNERS = ("random", "bayesian", "hyperband")
OBJECTIVES = ("val_accuracy", "val_loss", "accuracy", "loss")
TUNING_DIR = Path("tuning")
SEARCH_FILE = "search.json"


SEARCH_DEFAULTS = {"tuner": "random", "objective": "val_accuracy"}
NOT_IN_TRIALS = ("fine_tune_at", "fine_tune_epochs")  # trials train one phase


def build_parser() -> argparse.ArgumentParser:
    """The shared training flags (keras_digits.training.flags) plus the search's own."""
    p = argparse.ArgumentParser(
        prog="python -m keras_digits.tune",
        description="KerasTuner search over an arch's search space and the fit-time settings (batch size, "
        "optimizer, lr, schedule, augment, balance); resumable, distributable (docs/tuning.md, "
        "'Hyperparameter search').",
        epilog="Training flags set the base configuration of every trial. A flag that names a searched "
        "hyperparameter (--batch-size, --optimizer, --lr, --schedule, --augment, --balance, or a "
        "--model-kwargs key the arch's space searches) pins it, like --fixed; a --config file sets the base "
        "configuration and pins nothing. --epochs is the epochs "
        "per trial (Hyperband: the most). Resuming a project, the search settings not given again "
        "(arch, dataset, tuner, objective, seed, epochs, subset, image size, pins) are the project's.",
    )
    groups = add_train_flags(p)
    g = p.add_argument_group("search")
    g.add_argument(
        "--fixed",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="pin a hyperparameter (repeatable; JSON values), e.g. optimizer=adam or model/batch_norm=false",
    )
    g.add_argument("--tuner", default=argparse.SUPPRESS, help=f"one of: {', '.join(TUNERS)} (default: random)")
    g.add_argument(
        "--objective", default=argparse.SUPPRESS, help=f"one of: {', '.join(OBJECTIVES)} (default: val_accuracy)"
    )
    g.add_argument(
        "--max-trials", type=int, default=10, help="number of trials, all runs of the project together (default: 10)"
    )
    g.add_argument("--executions-per-trial", type=int, default=1, help="trainings per trial, seeds differ (default: 1)")
    g.add_argument(
        "--max-epochs", dest="epochs", type=positive_int, default=argparse.SUPPRESS, help="the same as --epochs"
    )
    g.add_argument(
        "--worker-timeout",
        type=float,
        default=120.0,
        help="distributed: seconds without a heartbeat before a worker's trial is given to another (default: 120)",
    )
    g.add_argument(
        "--tensorboard",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="TensorBoard logs with the HParams dashboard in PROJECT/tb (default: on)",
    )
    g.add_argument(
        "--max-rss-mb",
        type=float,
        default=0.0,
        help="after a trial that leaves this process above this many MB, restart the process (exec) "
        "and resume: Keras/TF keep ~25 MB per trial however memory is cleared (default: 0, never)",
    )
    groups[FILES].add_argument("--directory", default=str(TUNING_DIR), help="tuning root folder (default: tuning)")
    groups[FILES].add_argument(
        "--project", default=None, help="project folder name (default: <dataset>-<arch>-<tuner>)"
    )
    groups[FILES].add_argument(
        "--overwrite", action="store_true", help="start the project over (and replace --run-dir)"
    )
    groups[FILES].add_argument(
        "--retrain-best", action="store_true", help="train best_config.json into a run dir afterwards"
    )
    groups[FILES].add_argument(
        "--run-dir", default=None, help="run dir for --retrain-best (default: runs/tuned-<project>)"
    )
    return p


def validate_args(args: argparse.Namespace, tuner: str, objective: str) -> None:
    if tuner not in TUNERS:
        raise KerasDigitsError(f"unknown tuner {tuner!r}; choose one of: {', '.join(TUNERS)}")
    if objective not in OBJECTIVES:
        raise KerasDigitsError(f"unknown objective {objective!r}; choose one of: {', '.join(OBJECTIVES)}")
    for flag in ("max_trials", "executions_per_trial"):
        if getattr(args, flag) <= 0:
            raise KerasDigitsError(f"--{flag.replace('_', '-')} must be positive, got {getattr(args, flag)}")
    if args.max_rss_mb < 0:
        raise KerasDigitsError(f"--max-rss-mb must be >= 0, got {args.max_rss_mb}")
    if args.worker_timeout < 0:
        raise KerasDigitsError(f"--worker-timeout must be >= 0, got {args.worker_timeout}")
    if args.run_dir and not args.retrain_best:
        raise KerasDigitsError("--run-dir is for --retrain-best")
    if args.project is not None and (
        not args.project.strip()
        or args.project in (".", "..")
        or any(sep in args.project for sep in ("/", "\\", os.sep))
    ):
        raise KerasDigitsError(
            f"--project {args.project!r} must be a plain folder name (no path separators); "
            "use --directory for where projects go"
        )


def search_settings(cfg: TrainConfig, tuner: str, objective: str, fixed: dict[str, Any]) -> dict[str, Any]:
    """What defines a search (search.json); a project resumed with other values is refused."""
    return {
        "arch": cfg.arch,
        "dataset": cfg.dataset,
        "tuner": tuner,
        "objective": objective,
        "max_train_samples": cfg.max_train_samples,
        "image_size": cfg.image_size,
        "size": cfg.size,
        "seed": cfg.seed,
        "max_epochs": cfg.epochs,
        "fixed": fixed,
    }


def stored_settings(directory: Path, project: str | None, given: dict[str, Any], tuner: str) -> dict[str, Any]:
    """The search.json of the project this command resumes ({} for a new project or none stored)."""
    dataset = sized_name(given.get("dataset", TrainConfig.dataset), given.get("size"))
    name = project or f"{dataset}-{given.get('arch', TrainConfig.arch)}-{tuner}"
    return read_json_object(directory / name / SEARCH_FILE, lenient=True)


def check_project(project_dir: Path, settings: dict[str, Any]) -> None:
    old = read_json_object(project_dir / SEARCH_FILE, lenient=True)
    diff = sorted(k for k in settings if k in old and old[k] != settings[k])
    if diff:
        was = ", ".join(f"{k}={old[k]!r}" for k in diff)
        raise KerasDigitsError(
            f"{project_dir} holds a search with {was}; rerun with those, or pass --overwrite or another --project"
        )


def pins_from_flags(base: TrainConfig, given: dict[str, Any]) -> dict[str, Any]:
    """Searched hyperparameters set by training flags (--lr 0.01 pins lr, like --fixed lr=0.01)."""
    import keras_tuner as kt

    from keras_digits.tune.space import trial_config

    hp = kt.HyperParameters()
    trial_config(base, hp)
    pins = {k: v for k, v in given.items() if k in hp.values}
    pins.update(
        {f"model/{k}": v for k, v in dict(given.get("model_kwargs") or {}).items() if f"model/{k}" in hp.values}
    )
    return pins


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    given = given_options(args)
    tuner_kind = getattr(args, "tuner", None)
    stored = (
        {}
        if args.overwrite
        else stored_settings(Path(args.directory), args.project, given, tuner_kind or SEARCH_DEFAULTS["tuner"])
    )
    tuner_kind = tuner_kind or stored.get("tuner") or SEARCH_DEFAULTS["tuner"]
    objective = getattr(args, "objective", None) or stored.get("objective") or SEARCH_DEFAULTS["objective"]
    validate_args(args, tuner_kind, objective)
    for key, field in (
        ("arch", "arch"),
        ("dataset", "dataset"),
        ("max_train_samples", "max_train_samples"),
        ("image_size", "image_size"),
        ("size", "size"),
        ("seed", "seed"),
        ("max_epochs", "epochs"),
    ):
        if field not in given and key in stored:  # resuming: the project's settings, not today's defaults
            given[field] = stored[key]
    if given.get("strategy") == "multiworker":
        raise KerasDigitsError(
            "--strategy multiworker is for one train run; tune spreads its trials over workers "
            "itself (KERASTUNER_* variables, docs/distributed.md: Distributed hyperparameter search)"
        )
    for field in NOT_IN_TRIALS:
        if given.get(field) is not None:
            raise KerasDigitsError(
                f"--{field.replace('_', '-')}: trials train one phase; tune the head, then "
                "fine-tune with train --config best_config.json --fine-tune-at N"
            )
    if given.get("select_on", "accuracy") != "accuracy":
        raise KerasDigitsError(
            "--select-on: a search ranks trials by its --objective; --select-on applies to "
            "train; pass --select-on accuracy (a --recipe may have set auc)"
        )
    patience = given.get("patience", TrainConfig.patience)
    base = TrainConfig.from_dict({"early_stopping": patience > 0, **given})
    from keras_digits.data import get_spec
    from keras_digits.models import model_info

    model_info(base.arch)  # unknown names raise KerasDigitsError listing the known ones
    get_spec(base.dataset)
    from keras_digits.training.setup import check_fits_in_memory

    check_fits_in_memory(base)
    quiet_tensorflow()
    from keras_digits.runtime.oracle import role_from_env
    from keras_digits.tune.space import check_fixed, parse_fixed

    role = role_from_env()
    project = args.project or f"{sized_name(base.dataset, base.size)}-{base.arch}-{tuner_kind}"
    directory = Path(args.directory)
    project_dir = directory / project
    overwrite = args.overwrite
    if role == "worker" and (overwrite or args.retrain_best):
        print("note: --overwrite and --retrain-best are for the chief; this worker ignores them", file=sys.stderr)
        overwrite = False
    typed = {k: v for k, v in vars(args).items() if k in TrainConfig.field_names()}  # not --config's values
    fixed = {**pins_from_flags(base, typed), **parse_fixed(args.fixed)}
    if not fixed and not args.fixed and "fixed" in stored:
        fixed = dict(stored["fixed"])
    check_fixed(base, fixed)
    settings = search_settings(base, tuner_kind, objective, fixed)
    if not overwrite:
        check_project(project_dir, settings)
    from keras_digits.runtime.oracle import make_oracle
    from keras_digits.tune.hypermodel import DigitsHyperModel

    hypermodel = DigitsHyperModel(base, objective)
    if role != "chief":
        hypermodel.bundle  # noqa: B018  (load the data now: a missing file is one error, not failed trials)
    if role == "worker":
        from keras_digits.runtime.oracle import wait_for_chief

        wait_for_chief(f"worker {os.environ.get('KERASTUNER_TUNER_ID')}", base.worker_wait)
    oracle = make_oracle(tuner_kind, hypermodel.objective, args.max_trials, base.epochs, base.seed, fixed)
    oracle.worker_timeout = args.worker_timeout if role == "chief" else None
    search = Search(args, argv, role, tuner_kind, project, directory, overwrite, settings, hypermodel, oracle)
    if role != "worker":  # workers share the chief's project folder by design
        check_output_dir(project_dir, "tuner project")
        with hold(project_dir, "tuner project"):
            return run_search(search)
    try:
        return run_search(search)
    except Exception as exc:
        from keras_digits.runtime.oracle import lost_chief

        error = lost_chief(exc, f"worker {os.environ.get('KERASTUNER_TUNER_ID')}", base.worker_wait)
        if error is None:
            raise
        raise error from None


@dataclass
class Search:
    """Everything `run_search` needs, resolved by `main`."""

    args: argparse.Namespace
    argv: Sequence[str] | None
    role: str
    tuner_kind: str
    project: str
    directory: Path
    overwrite: bool
    settings: dict[str, Any]
    hypermodel: Any
    oracle: Any

    @property
    def project_dir(self) -> Path:
        return self.directory / self.project


def run_search(search: Search) -> int:
    """Run the search (single process, chief or worker), then report and optionally retrain the best."""
    from keras_digits.runtime.oracle import serve_oracle
    from keras_digits.runtime.strategy import get_strategy
    from keras_digits.tune.report import budget_note, write_reports
    from keras_digits.tune.search import DigitsHyperbandTuner, DigitsTuner, RestartProcess

    args, argv, role, hypermodel, oracle = search.args, search.argv, search.role, search.hypermodel, search.oracle
    project, directory, project_dir, overwrite = search.project, search.directory, search.project_dir, search.overwrite
    settings, base = search.settings, hypermodel.base

    def report(o=None) -> TrainConfig | None:
        return write_reports(o if o is not None else tuner.oracle, project_dir, hypermodel)

    tuner_cls = DigitsHyperbandTuner if search.tuner_kind == "hyperband" else DigitsTuner
    heartbeat = max(1.0, args.worker_timeout / 4) if args.worker_timeout else 30.0
    strategy = None if base.strategy == "auto" else get_strategy(base.strategy, base.verbose)
    tuner = tuner_cls(
        oracle,
        hypermodel,
        role=role,
        heartbeat_s=heartbeat,
        max_rss_mb=args.max_rss_mb,
        report=None if role == "worker" else report,
        directory=str(directory),
        project_name=project,
        overwrite=overwrite,
        executions_per_trial=args.executions_per_trial,
        distribution_strategy=strategy,
    )
    if role != "worker":
        write_json(project_dir / SEARCH_FILE, settings)

    import keras

    callbacks = (
        [keras.callbacks.TensorBoard(log_dir=str(project_dir / "tb"), histogram_freq=0, write_graph=False)]
        if args.tensorboard
        else []
    )
    if role == "chief":
        tuner.oracle.verbose = base.verbose
        tuner.save()
        serve_oracle(tuner, on_change=report)
    else:
        try:
            tuner.search(epochs=base.epochs, callbacks=callbacks, verbose=base.verbose)
        except RestartProcess as exc:  # every finished trial is saved: a fresh process resumes the search
            restart_argv = [a for a in (sys.argv[1:] if argv is None else argv) if a != "--overwrite"]
            print(f"{exc}: restarting the process to resume with fresh memory", flush=True)
            sys.stderr.flush()
            os.execv(sys.executable, [sys.executable, "-m", "keras_digits.tune", *restart_argv])
        except RuntimeError as exc:
            if "consecutive failures" not in str(exc):
                raise
            last = [line for line in str(exc).strip().splitlines() if line.strip()][-1]
            raise KerasDigitsError(
                f"search stopped after {oracle.max_consecutive_failed_trials} failed trials "
                f"in a row; last error: {last}"
            ) from None
    if role == "worker":
        print(f"worker {tuner.tuner_id}: search finished", flush=True)
        return 0

    best = report()
    if best is None:
        print(f"no completed trial yet; table in {project_dir / 'trials.md'}")
        return 0
    info = read_json_object(project_dir / "best_trial.json", lenient=True)
    objective = settings["objective"]
    print(
        f"best trial {info.get('trial')} (trial_{info.get('trial_id')}): {objective} {info.get(objective):.4f}; "
        f"table {project_dir / 'trials.md'}; config {project_dir / 'best_config.json'}"
    )
    print(budget_note(base))
    if args.retrain_best:
        from keras_digits.training.run import train_and_evaluate
        from keras_digits.training.rundir import RUNS_DIR

        run_dir = Path(args.run_dir) if args.run_dir else RUNS_DIR / f"tuned-{project}"
        print(
            f"retraining the best configuration on the whole training set for up to {best.epochs} epochs "
            f"into {run_dir}",
            flush=True,
        )
        metrics = train_and_evaluate(best.replace(verbose=base.verbose), run_dir, overwrite=args.overwrite)
        split = "test" if "test" in metrics else "val"
        print(f"retrained best config into {run_dir}: {split} accuracy {metrics[split]['accuracy']:.4f}")
    return 0
