"""Sweeps and the reports' experiments: the grid runner, the table/figure writer, every study --quick."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from keras_digits.config import TrainConfig
from keras_digits.errors import KerasDigitsError
from keras_digits.studies.grid import RunResult, Variant

TINY = ["--dataset", "digits", "--max-train-samples", "100"]


def _fake(factor, value, seed, val, test, x=None, epochs=3):
    metrics = {
        "val": {"accuracy": val, "f1": val},
        "test": {"accuracy": test, "f1": test - 0.01},
        "epochs_run": epochs,
        "train_seconds": 2.0,
    }
    return RunResult(Variant(factor, value, {}, x), seed, Path(f"/nowhere/{factor}={value}-s{seed}"), metrics, True)


def _table_rows(md: str) -> list[list[str]]:
    rows = [line for line in md.splitlines() if line.startswith("| ") and not line.startswith("| factor")]
    return [[c.strip() for c in r.strip("|").split("|")] for r in rows if not set(r) <= set("|-: ")]


# ---------------------------------------------------------------------------- --vary parsing
def test_parse_vary_types_and_order():
    from keras_digits.studies.grid import parse_vary

    v = parse_vary(
        [
            "lr=0.001,0.1",
            "batch_size=16,64",
            "optimizer=sgd,adam",
            "early_stopping=on,off",
            "max_train_samples=none,500",
        ]
    )
    assert [(x.factor, x.value) for x in v][:2] == [("lr", "0.001"), ("lr", "0.1")]
    assert v[0].changes == {"lr": 0.001} and v[0].x == 0.001
    assert v[2].changes == {"batch_size": 16} and isinstance(v[2].changes["batch_size"], int)
    assert v[4].changes == {"optimizer": "sgd"} and v[4].x is None
    assert v[6].changes == {"early_stopping": True} and v[7].changes == {"early_stopping": False}
    assert v[8].changes == {"max_train_samples": None} and v[9].changes == {"max_train_samples": 500}


@pytest.mark.parametrize(
    "items, words",
    [
        (["lr"], "FIELD=V1"),
        (["colour=red"], "not a field"),
        (["seed=1,2"], "not a field"),
        (["batch_size=16,big"], "cannot read"),
        (["lr=0.1", "lr=0.2"], "twice"),
    ],
)
def test_parse_vary_errors(items, words):
    from keras_digits.studies.grid import parse_vary

    with pytest.raises(KerasDigitsError, match=words):
        parse_vary(items)


# ---------------------------------------------------------------------------- summary, table, figures
def test_summary_mean_sd_and_best_by_validation(tmp_path):
    from keras_digits.studies.report import markdown_table, summarize, write_results

    results = [
        _fake("lr", "0.001", 1, 0.90, 0.80, 0.001),
        _fake("lr", "0.001", 2, 0.92, 0.82, 0.001),
        _fake("lr", "0.1", 1, 0.10, 0.99, 0.1),
        _fake("lr", "0.1", 2, 0.12, 0.97, 0.1),
        _fake("augment", "none", 1, 0.5, 0.5),
        _fake("augment", "light", 1, 0.6, 0.4),
    ]
    summary = summarize(results)
    lr_small = summary[0]
    assert lr_small["n"] == 2 and lr_small["val_accuracy"] == pytest.approx(0.91)
    assert lr_small["val_accuracy_sd"] == pytest.approx(np.std([0.90, 0.92], ddof=1))
    assert lr_small.get("best") and not summary[1].get("best")  # chosen on val, although test says otherwise
    assert summary[3].get("best") and np.isnan(summary[3]["val_accuracy_sd"])  # one seed: no sd
    table = markdown_table(summary)
    rows = _table_rows(table)
    assert rows[0][:3] == ["lr", "0.001", "2"] and rows[0][3].startswith("**0.9100 ± 0.0141")
    assert rows[3][3] == "**0.6000**"
    paths = write_results(tmp_path, "study", results, title="A study", intro="Why.", command="python -m x")
    md = paths["md"].read_text()
    assert "# A study" in md and "python -m x" in md and "![accuracy per setting](study.png)" in md
    assert paths["png"].stat().st_size > 1000
    with open(paths["csv"]) as fh:
        assert len(list(csv.DictReader(fh))) == 6


# ---------------------------------------------------------------------------- the sweep CLI
def test_sweep_cli_writes_table_and_resumes(tmp_path, capsys):
    from keras_digits.sweep import main

    out = tmp_path / "sweep"
    args = [
        *TINY,
        "--arch",
        "dense",
        "--epochs",
        "1",
        "--vary",
        "lr=0.001,0.5",
        "--vary",
        "batch_size=32",
        "--seeds",
        "1",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    md = (out / "sweep.md").read_text()
    rows = _table_rows(md)
    assert [r[:2] for r in rows] == [["lr", "0.001"], ["lr", "0.5"], ["batch_size", "32"]]
    same = [[c.strip("*") for c in row[3:]] for row in (rows[0], rows[2])]
    assert same[0] == same[1]  # lr=0.001 and batch_size=32 are the base config: trained once
    runs = sorted(p.name for p in (out / "runs").iterdir())
    assert runs == ["lr=0.001-s42", "lr=0.5-s42"]
    cfg = json.loads((out / "runs" / "lr=0.5-s42" / "config.json").read_text())
    assert cfg["lr"] == 0.5 and cfg["arch"] == "dense" and cfg["max_train_samples"] == 100
    assert (out / "sweep.png").is_file() and (out / "sweep.csv").is_file()
    assert "--vary lr=0.001,0.5" in md
    capsys.readouterr()
    assert main(args) == 0  # resumes: every run read back, nothing trained
    assert capsys.readouterr().out.count("read back") == 2
    with pytest.raises(KerasDigitsError, match="another configuration"):
        main([*TINY, "--arch", "dense", "--epochs", "2", "--vary", "lr=0.5", "--out", str(out)])


def test_sweep_cli_rejects_run_dir(tmp_path, capsys):
    from keras_digits.sweep import main

    with pytest.raises(SystemExit):  # the sweep names its run directories itself (under --out)
        main([*TINY, "--vary", "lr=0.1", "--run-dir", str(tmp_path)])
    assert "unrecognized arguments: --run-dir" in capsys.readouterr().err


# ---------------------------------------------------------------------------- experiments
def test_experiment_list_and_unknown(capsys):
    from keras_digits.experiment import main
    from keras_digits.studies.experiments import EXPERIMENTS, run_experiment

    assert set(EXPERIMENTS) == {
        "balancing",
        "augmentation",
        "batchnorm",
        "simple_cnn_ablation",
        "optimizers",
        "lr_batch_epochs",
        "cifar_lab",
    }
    assert main(["--list"]) == 0
    assert "cifar_lab" in capsys.readouterr().out
    with pytest.raises(KerasDigitsError, match="unknown experiment"):
        run_experiment("nope")


def test_experiment_config_layers():
    from keras_digits.studies.experiments import EXPERIMENTS, QUICK, experiment_config

    exp = EXPERIMENTS["lr_batch_epochs"]
    full = experiment_config(exp)
    assert full.dataset == "mnist" and full.early_stopping is False and full.epochs == 15
    quick = experiment_config(exp, quick=True, dataset="digits")
    assert quick.epochs == QUICK["epochs"] and quick.max_train_samples == QUICK["max_train_samples"]
    assert quick.dataset == "digits"
    assert experiment_config(exp, quick=True, epochs=3).epochs == 3  # the command line wins
    assert EXPERIMENTS["cifar_lab"].dataset == "cifar10"
    from keras_digits.experiment import build_parser

    bn = EXPERIMENTS["batchnorm"]
    assert experiment_config(bn, quick=True).image_size == 32
    size = build_parser().parse_args(["batchnorm", "--image-size", "48"]).image_size
    assert experiment_config(bn, quick=True, image_size=size).image_size == 48
    variants = EXPERIMENTS["lr_batch_epochs"].variants(False)
    assert {(v.factor, v.value) for v in variants} >= {("lr", "0.1"), ("batch_size", "16"), ("epochs", "20")}


# Every study runs --quick here. The default run keeps the three that cover every code path (skewed-data
# transform and both balancing modes; the numeric sweep with its shared base run; model_kwargs and the
# missing-arch skip) within the test-time budget; the other four (each ~3-5 more tiny trainings) are slow.
SLOW = pytest.mark.slow


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("balancing", marks=SLOW),  # ~45 s; passed in the default run at 17f77d5 + the real-world change
        pytest.param("lr_batch_epochs", marks=SLOW),  # ~35 s; the sweep test covers grids
        pytest.param("batchnorm", marks=SLOW),
        pytest.param("augmentation", marks=SLOW),
        pytest.param("simple_cnn_ablation", marks=SLOW),
        pytest.param("optimizers", marks=SLOW),
        pytest.param("cifar_lab", marks=SLOW),
    ],
)
def test_every_experiment_runs_quick(name, tmp_path):
    from keras_digits.experiment import main
    from keras_digits.studies.experiments import EXPERIMENTS

    exp = EXPERIMENTS[name]
    out = tmp_path / name
    assert main([name, "--quick", *TINY, "--out", str(out)]) == 0
    md = (out / f"{name}.md").read_text()
    rows = _table_rows(md)
    assert len(rows) == len(exp.variants(True))
    assert all(r[2] == "1" and r[3] != "n/a" and r[4] != "n/a" for r in rows)  # one seed; val and test
    assert "Quick mode" in md and f"experiment {name} --quick" in md
    assert (out / f"{name}.png").is_file() and (out / f"{name}.csv").is_file()
    if name == "balancing":  # trained on the long-tailed subset; val/test untouched
        ds = json.loads((out / "runs" / "early_stopping=none-s42" / "dataset.json").read_text())
        assert ds["sizes"]["train"] < 60 and ds["sizes"]["val"] == 144
        cfgs = {json.loads(p.read_text())["balance"] for p in (out / "runs").glob("*/config.json")}
        assert cfgs == {"none", "class_weight", "resample"}
    if name == "lr_batch_epochs":  # the base setting is trained once, shown under every factor
        assert len(list((out / "runs").iterdir())) == 4


def test_experiment_needs_data_for_its_default_dataset(tmp_path):
    from keras_digits.studies.experiments import run_experiment

    with pytest.raises(KerasDigitsError):
        run_experiment("augmentation", tmp_path / "x", quick=True, data_dir=str(tmp_path / "empty"), log=lambda m: 0)


def test_skew_transform_used_by_balancing_only():
    from keras_digits.studies.experiments import EXPERIMENTS

    assert EXPERIMENTS["balancing"].transform_data is not None
    assert all(e.transform_data is None for n, e in EXPERIMENTS.items() if n != "balancing")
    assert TrainConfig().balance == "none"
