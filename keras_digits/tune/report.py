"""The search's tables: trials.csv and trials.md (one row per trial), best_trial.json and
best_config.json (the best trial as a TrainConfig that `train --config` accepts).

best_config.json holds the searched hyperparameters and the base configuration, not the search's budget
(BUDGET: --max-train-samples, the epochs per trial) nor runtime settings: `train --config best_config.json`
trains on the whole training set for its own --epochs. best_trial.json records the budget the trials had."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from keras_tuner.engine.trial import TrialStatus

from keras_digits.config import TrainConfig
from keras_digits.utils.io import read_json_object, write_json, write_text

INFO_FILE = "run_info.json"  # per trial: worker, host, pid, epochs, seconds, RSS, earlier attempts
BUDGET = ("max_train_samples", "epochs")  # what made trials cheap, not what the best trial found
RUNTIME = ("verbose", "worker_wait")  # how a process runs, not what it trains


def trial_number(trial_id: str) -> int:
    """KerasTuner's 1-based trial number ("Trial 2 Complete") of a 0-based trial id ("01")."""
    return int(trial_id) + 1


def best_config_dict(cfg: TrainConfig) -> dict[str, Any]:
    """`cfg` as best_config.json holds it: less the search budget and the runtime settings."""
    return {k: v for k, v in cfg.to_dict().items() if k not in BUDGET + RUNTIME}


def budget_note(base: TrainConfig) -> str:
    """One line on what best_config.json leaves out."""
    subset = "all" if base.max_train_samples is None else str(base.max_train_samples)
    return (
        f"best_config.json leaves out the search's budget (--max-train-samples {subset}, --epochs "
        f"{base.epochs} per trial): train --config uses the whole training set and its own --epochs (default "
        f"{TrainConfig.__dataclass_fields__['epochs'].default})"
    )


def trial_rows(oracle, project_dir: Path, objective: str) -> tuple[list[dict[str, Any]], list[str]]:
    """One row per trial (sorted by id) and the hyperparameter column names."""
    rows, hp_names = [], [hp.name for hp in oracle.get_space().space]
    for trial_id in sorted(oracle.trials, key=lambda t: (len(t), t)):
        trial = oracle.trials[trial_id]
        info = read_json_object(project_dir / f"trial_{trial_id}" / INFO_FILE, lenient=True)
        values = dict(trial.hyperparameters.values)
        for name in values:
            if name not in hp_names:
                hp_names.append(name)
        rows.append(
            {
                "trial": trial_id,
                "status": trial.status,
                objective: trial.score,
                "epochs": info.get("epochs"),
                "seconds": info.get("seconds"),
                "worker": info.get("tuner_id"),
                "rss_mb": info.get("rss_mb"),
                **values,
            }
        )
    return rows, hp_names


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.0f}"
    return str(value)


def write_reports(oracle, project_dir: Path, hypermodel) -> TrainConfig | None:
    """trials.csv, trials.md, best_trial.json and best_config.json; returns the best config (or None)."""
    objective = hypermodel.objective.name
    rows, hp_names = trial_rows(oracle, project_dir, objective)
    columns = ["trial", "status", objective, "epochs", "seconds", "worker", "rss_mb", *hp_names]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row.get(k) for k in columns})
    write_text(project_dir / "trials.csv", buf.getvalue())

    best = [t for t in oracle.get_best_trials(1) if t.status == TrialStatus.COMPLETED]
    best_id = best[0].trial_id if best else None
    done = sum(r["status"] == TrialStatus.COMPLETED for r in rows)
    lines = [
        f"# Tuning {hypermodel.base.arch} on {hypermodel.base.dataset}",
        "",
        f"{len(rows)} trials, {done} completed; objective {objective} "
        f"({hypermodel.objective.direction}); best: trial {best_id if best_id is not None else '-'} (*)",
        "",
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
    ]
    for row in rows:
        cells = [_fmt(row.get(c)) for c in columns]
        if row["trial"] == best_id:
            cells[0] += " *"
        lines.append("| " + " | ".join(cells) + " |")
    write_text(project_dir / "trials.md", "\n".join(lines) + "\n")

    if not best:
        return None
    data = best_config_dict(hypermodel.config(best[0].hyperparameters.copy()))
    base = hypermodel.base
    write_json(
        project_dir / "best_trial.json",
        {
            "trial_id": best_id,
            "trial": trial_number(best_id),
            objective: best[0].score,
            "hyperparameters": best[0].hyperparameters.values,
            "search_budget": {k: getattr(base, k) for k in BUDGET},
        },
    )
    write_json(project_dir / "best_config.json", data)
    return TrainConfig.from_dict(data)
