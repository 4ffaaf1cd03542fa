"""A grid of training runs, as sweeps and studies run them: settings (`Variant`s) parsed from
`--vary FIELD=V1,V2,...`, each trained with several seeds into OUT/runs/<factor>=<value>-s<seed>.

A run whose metrics.json exists is read back instead of retrained, so an interrupted grid resumes (a
run directory holding a different configuration is an error, not silently reused); a setting equal to
another one of the grid is trained once; a run that diverges is recorded as such and the grid goes on.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from keras_digits.config import TrainConfig, comparable
from keras_digits.errors import KerasDigitsError, TrainingDiverged
from keras_digits.evaluation.records import is_diverged
from keras_digits.utils.io import read_json_object

NOT_VARIED = ("seed", "verbose", "model_kwargs", "worker_wait")  # --seeds, and how a run is shown or spread


@dataclass(frozen=True)
class Variant:
    """One setting of a grid: `changes` to the base config, reported as (factor, value)."""

    factor: str
    value: str
    changes: Mapping[str, Any] = field(default_factory=dict)
    x: float | None = None  # numeric position on the factor's axis; None = categorical


@dataclass
class RunResult:
    """One finished (or read back) run of a grid."""

    variant: Variant
    seed: int
    run_dir: Path
    metrics: dict
    trained: bool


# ---------------------------------------------------------------------------- parsing --vary
def _field_kind(name: str) -> str:
    annotation = str(TrainConfig.__dataclass_fields__[name].type)
    for kind in ("bool", "int", "float", "Mapping", "str"):
        if kind in annotation:
            return kind
    return "str"


def parse_value(name: str, text: str) -> Any:
    """A --vary value typed like the TrainConfig field `name`."""
    text = text.strip()
    kind = _field_kind(name)
    if text.lower() == "none" and "None" in str(TrainConfig.__dataclass_fields__[name].type):
        return None
    try:
        if kind == "bool":
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if kind == "int":
            return int(text)
        if kind == "float":
            return float(text)
        if kind == "Mapping":
            value = json.loads(text)
            if not isinstance(value, dict):
                raise ValueError
            return value
    except ValueError:
        raise KerasDigitsError(f"--vary {name}: cannot read {text!r} as {kind}") from None
    return text


def parse_vary(items: Sequence[str]) -> list[Variant]:
    """--vary FIELD=V1,V2,... (repeatable) -> variants, in the order given."""
    variants: list[Variant] = []
    seen: set[str] = set()
    fields = TrainConfig.field_names()
    for item in items:
        name, eq, values = item.partition("=")
        name = name.strip().replace("-", "_")
        if not eq or not values.strip():
            raise KerasDigitsError(f"--vary expects FIELD=V1,V2,..., got {item!r}")
        if name not in fields or name in NOT_VARIED:
            allowed = sorted(fields - set(NOT_VARIED))
            raise KerasDigitsError(f"--vary: {name!r} is not a field one can vary; fields: {', '.join(allowed)}")
        if name in seen:
            raise KerasDigitsError(f"--vary {name} given twice")
        seen.add(name)
        for text in values.split(","):
            value = parse_value(name, text)
            x = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
            variants.append(Variant(name, text.strip(), {name: value}, x))
    return variants


# ---------------------------------------------------------------------------- running a grid
def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", str(text)).strip("_") or "x"


def run_dir_name(variant: Variant, seed: int) -> str:
    """<factor>=<value>-s<seed>, filesystem-safe."""
    return f"{_slug(variant.factor)}={_slug(variant.value)}-s{seed}"


def run_grid(
    base: TrainConfig,
    variants: Sequence[Variant],
    seeds: int,
    out: str | Path,
    *,
    transform_data: Callable | None = None,
    log: Callable[[str], None] = print,
    worker_timeout: float | None = None,
) -> list[RunResult] | None:
    """Train every variant with `seeds` seeds (base.seed + i) into OUT/runs; resumable; see module doc.

    Started as a KerasTuner chief or worker (KERASTUNER_* variables; keras_digits.studies.workers), the
    runs are spread over the workers: a worker returns None once no run is left, the chief returns the
    results once every run has ended, read back from OUT/runs as a single process would."""
    if seeds < 1:
        raise KerasDigitsError(f"--seeds must be at least 1, got {seeds}")
    out = Path(out)
    plan: list[tuple[Variant, int, TrainConfig]] = []
    for variant in variants:
        for i in range(seeds):
            try:
                changes = dict(variant.changes)
                if "model_kwargs" in changes:  # a setting's architecture options add to the base's
                    changes["model_kwargs"] = {**dict(base.model_kwargs), **dict(changes["model_kwargs"])}
                cfg = base.replace(**changes, seed=base.seed + i)
            except TypeError as exc:
                raise KerasDigitsError(f"bad setting {variant.factor}={variant.value}: {exc}") from None
            if cfg.strategy == "multiworker":
                raise KerasDigitsError(
                    "--strategy multiworker is for one train run; a grid spreads its runs over "
                    "workers itself (docs/distributed.md: Sweeps and studies over several workers)"
                )
            plan.append((variant, base.seed + i, cfg))
    from keras_digits.studies.workers import DEFAULT_WORKER_TIMEOUT, grid_role

    role = grid_role()
    if role != "single":
        firsts: dict[str, tuple[Variant, int, TrainConfig]] = {}
        for variant, seed, cfg in plan:  # a setting equal to an earlier one is trained once, in its folder
            firsts.setdefault(_key(cfg), (variant, seed, cfg))
        unique = list(firsts.values())
        if role == "worker":
            from keras_digits.studies.workers import work_grid

            def execute(i: int) -> float:
                variant, seed, cfg = unique[i]
                label = f"[{i + 1}/{len(unique)}] {variant.factor}={variant.value} seed {seed}"
                metrics, _ = _run_one(variant, seed, cfg, out, label, transform_data, log)
                return float("nan") if is_diverged(metrics) else float(metrics["val"]["accuracy"])

            work_grid(unique, execute, log=log, wait_s=base.worker_wait)
            return None
        from keras_digits.studies.workers import serve_grid

        serve_grid(len(unique), out, DEFAULT_WORKER_TIMEOUT if worker_timeout is None else worker_timeout, log=log)
    done: dict[str, RunResult] = {}  # config key -> first result (identical settings train once)
    results: list[RunResult] = []
    for n, (variant, seed, cfg) in enumerate(plan, 1):
        key = _key(cfg)
        label = f"[{n}/{len(plan)}] {variant.factor}={variant.value} seed {seed}"
        if key in done:
            first = done[key]
            results.append(RunResult(variant, seed, first.run_dir, first.metrics, False))
            log(f"{label}: same configuration as {first.run_dir.name}")
            continue
        metrics, trained = _run_one(variant, seed, cfg, out, label, transform_data, log)
        result = RunResult(variant, seed, out / "runs" / run_dir_name(variant, seed), metrics, trained)
        done[key] = result
        results.append(result)
    return results


def _key(cfg: TrainConfig) -> str:
    return json.dumps(comparable(cfg.to_dict()), sort_keys=True)


def _run_one(
    variant: Variant, seed: int, cfg: TrainConfig, out: Path, label: str, transform_data, log: Callable[[str], None]
) -> tuple[dict, bool]:
    """(metrics, trained) of one run of the grid: read back if it finished before, else trained."""
    from keras_digits.training.run import train_and_evaluate

    run_dir = out / "runs" / run_dir_name(variant, seed)
    metrics_path = run_dir / "metrics.json"
    if metrics_path.is_file():
        old = read_json_object(run_dir / "config.json") if (run_dir / "config.json").is_file() else {}
        if comparable(old) != comparable(cfg.to_dict()):
            raise KerasDigitsError(
                f"{run_dir} holds a finished run with another configuration; use another --out or delete that run"
            )
        metrics = read_json_object(metrics_path)
        log(f"{label}: done before, read back" + (" (diverged)" if is_diverged(metrics) else ""))
        return metrics, False
    start = time.perf_counter()
    try:
        metrics = train_and_evaluate(cfg, run_dir, transform_data=transform_data)
    except TrainingDiverged as exc:  # recorded in the run's metrics.json; the grid goes on
        metrics = read_json_object(metrics_path)
        log(f"{label}: {exc}")
    if not is_diverged(metrics):
        log(
            f"{label}: val {metrics['val']['accuracy']:.4f}"
            + (f", test {metrics['test']['accuracy']:.4f}" if "test" in metrics else "")
            + f" ({time.perf_counter() - start:.0f} s)"
        )
    return metrics, True
