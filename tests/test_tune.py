"""KerasTuner search: search spaces, the trial table, best config, resume, retrain, distributed chief/workers."""

from __future__ import annotations

import inspect
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

kt = pytest.importorskip("keras_tuner")

from conftest import free_ports  # noqa: E402

from keras_digits.config import TrainConfig, load_config_file  # noqa: E402
from keras_digits.models import model_info  # noqa: E402
from keras_digits.tune import cli as tune_cli  # noqa: E402
from keras_digits.tune import space as tune_space  # noqa: E402
from keras_digits.utils.cli import run_cli  # noqa: E402

TINY = ["--dataset", "digits", "--max-train-samples", "200", "--max-epochs", "1", "--verbose", "0"]
DIST_ENV = ("KERASTUNER_TUNER_ID", "KERASTUNER_ORACLE_IP", "KERASTUNER_ORACLE_PORT")


def builder_defaults(arch: str) -> dict:
    params = inspect.signature(model_info(arch).builder).parameters
    return {n: p.default for n, p in params.items() if p.kind == p.KEYWORD_ONLY}


def normalise(kwargs: dict) -> dict:
    return {k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in kwargs.items()}


@pytest.fixture(autouse=True)
def _no_distribution(monkeypatch):
    for name in DIST_ENV:
        monkeypatch.delenv(name, raising=False)


# ---------------------------------------------------------------------------- search spaces
def test_simple_cnn_space_golden_defaults():
    """Fresh HyperParameters -> every default -> exactly the registry builder's defaults."""
    hp = kt.HyperParameters()
    kwargs = model_info("simple_cnn").search_space(hp)
    assert hp.values == {
        "base_filters": 32,
        "conv_blocks": 3,
        "dense_units": 256,
        "batch_norm": True,
        "conv_dropout": 0.25,
        "dense_dropout": 0.5,
    }
    assert kwargs == {
        "filters": (32, 64, 128),
        "dense_units": 256,
        "batch_norm": True,
        "conv_dropout": 0.25,
        "dense_dropout": 0.5,
    }
    defaults = builder_defaults("simple_cnn")
    assert all(normalise(kwargs)[k] == normalise(defaults)[k] for k in kwargs)


DECLARED = [
    "simple_cnn",
    "simple_cnn_v1",
    "keras_cnn",
    "dense",
    "alexnet",
    "resnet18",
    "resnet34",
    "cifar_cnn",
    "resnet_cifar",
    "vgg16",
]


def test_every_declared_space_is_tested():
    from keras_digits.models import list_models

    assert sorted(n for n in list_models() if model_info(n).search_space) == sorted(DECLARED)


@pytest.mark.parametrize("arch", DECLARED)
def test_declared_space_defaults_are_builder_defaults(arch):
    space = model_info(arch).search_space
    assert space is not None, f"{arch} declares no search space"
    kwargs = normalise(space(kt.HyperParameters()))
    defaults = normalise(builder_defaults(arch))
    assert kwargs and set(kwargs) <= set(defaults)
    assert {k: defaults[k] for k in kwargs} == kwargs


def test_trial_config_defaults_are_train_defaults():
    base = TrainConfig(arch="simple_cnn", dataset="digits", epochs=3)
    hp = kt.HyperParameters()
    cfg = tune_space.trial_config(base, hp)
    d = TrainConfig()
    for name in ("batch_size", "optimizer", "lr", "schedule", "augment", "balance"):
        assert getattr(cfg, name) == getattr(d, name), name
    assert cfg.epochs == 3
    assert normalise(dict(cfg.model_kwargs)) == normalise(model_info("simple_cnn").search_space(kt.HyperParameters()))
    assert {n for n in hp.values if n.startswith("model/")} == {
        "model/base_filters",
        "model/conv_blocks",
        "model/dense_units",
        "model/batch_norm",
        "model/conv_dropout",
        "model/dense_dropout",
    }
    # values already on hp are read back, not redrawn
    hp.values["lr"], hp.values["model/base_filters"] = 0.005, 16
    cfg = tune_space.trial_config(base, hp)
    assert cfg.lr == 0.005 and list(cfg.model_kwargs["filters"]) == [16, 32, 64]


@pytest.mark.parametrize("arch", ["alexnet", "resnet18", "resnet_cifar", "cifar_cnn", "vgg16"])
def test_generic_space_for_undeclared_archs(arch):
    hp = kt.HyperParameters()
    kwargs = tune_space.generic_space(arch)(hp)
    defaults = builder_defaults(arch)
    assert set(kwargs) <= {"width", "dropout", "batch_norm"} & set(defaults)
    assert {k: defaults[k] for k in kwargs} == kwargs  # defaults map to the builder's defaults


def test_generic_space_values():
    hp = kt.HyperParameters()
    tune_space.generic_space("resnet18")(hp)
    assert hp.values == {"width": 64}
    assert hp.space[0].values == [32, 64]
    hp = kt.HyperParameters()
    tune_space.generic_space("alexnet")(hp)
    assert set(hp.values) == {"width", "dropout", "batch_norm"}


# ---------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "args, needle",
    [
        (["--arch", "nope"], "unknown arch"),
        (["--dataset", "nope"], "unknown dataset"),
        (["--tuner", "grid"], "unknown tuner"),
        (["--max-trials", "0"], "--max-trials must be positive"),
        (["--max-trials", "-2"], "--max-trials must be positive"),
        (["--objective", "f1"], "unknown objective"),
        (["--fixed", "nope=3"], "no hyperparameter nope"),
    ],
)
def test_bad_input_is_one_line_exit_2(tmp_path, capsys, args, needle):
    code = run_cli(tune_cli.main, ["--directory", str(tmp_path), *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0]
    assert not (tmp_path / "digits-simple_cnn-random").exists()


def test_bad_input_cli_subprocess(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "keras_digits.tune", "--tuner", "grid", "--directory", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: unknown tuner 'grid'; choose one of: random, bayesian, hyperband"
    ]


# ---------------------------------------------------------------------------- search, table, resume, retrain
def read_trials(project: Path) -> dict[str, dict]:
    out = {}
    for f in sorted(project.glob("trial_*/trial.json")):
        out[f.parent.name] = json.loads(f.read_text())
    return out


@pytest.fixture(scope="module")
def resumed_search(tmp_path_factory):
    """A random search of 2 trials, then the same command with --max-trials 3 (in-process, to save time)."""
    root = tmp_path_factory.mktemp("tune")
    args = ["--arch", "simple_cnn", *TINY, "--tuner", "random", "--directory", str(root), "--project", "p"]
    project = root / "p"
    saved = {k: os.environ.pop(k) for k in DIST_ENV if k in os.environ}
    try:
        assert run_cli(tune_cli.main, [*args, "--max-trials", "2"]) == 0
        first = {
            name: (t["status"], t["hyperparameters"]["values"], t["score"]) for name, t in read_trials(project).items()
        }
        first_info = {p.parent.name: p.read_text() for p in project.glob("trial_*/run_info.json")}
        first_ckpt = {p.parent.name: p.stat().st_mtime_ns for p in project.glob("trial_*/checkpoint*")}
        assert run_cli(tune_cli.main, [*args, "--max-trials", "3"]) == 0
    finally:
        os.environ.update(saved)
    return {
        "root": root,
        "project": project,
        "args": args,
        "first": first,
        "first_info": first_info,
        "first_ckpt": first_ckpt,
    }


def test_first_run_has_two_trials(resumed_search):
    first = resumed_search["first"]
    assert sorted(first) == ["trial_0", "trial_1"]
    assert all(status == "COMPLETED" for status, _, _ in first.values())


def test_resume_runs_only_the_missing_trial(resumed_search):
    project = resumed_search["project"]
    trials = read_trials(project)
    assert sorted(trials) == ["trial_0", "trial_1", "trial_2"]
    assert all(t["status"] == "COMPLETED" for t in trials.values())
    for name, (status, values, score) in resumed_search["first"].items():  # earlier trials untouched
        assert (trials[name]["status"], trials[name]["hyperparameters"]["values"], trials[name]["score"]) == (
            status,
            values,
            score,
        )
        assert (project / name / "run_info.json").read_text() == resumed_search["first_info"][name]
    for name, mtime in resumed_search["first_ckpt"].items():
        assert next((project / name).glob("checkpoint*")).stat().st_mtime_ns == mtime
    assert json.loads((project / "search.json").read_text())["arch"] == "simple_cnn"


def test_trial_table(resumed_search):
    project = resumed_search["project"]
    md = (project / "trials.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| ") and not line.startswith("| trial")]
    assert len(rows) == 3
    assert "3 trials, 3 completed" in md and " * |" in md
    import csv

    table = list(csv.DictReader((project / "trials.csv").open()))
    assert [r["trial"] for r in table] == ["0", "1", "2"]
    for col in (
        "status",
        "val_accuracy",
        "epochs",
        "seconds",
        "worker",
        "rss_mb",
        "batch_size",
        "optimizer",
        "lr",
        "schedule",
        "augment",
        "balance",
        "model/base_filters",
        "model/batch_norm",
    ):
        assert col in table[0], col
    for r in table:
        assert r["status"] == "COMPLETED" and r["worker"] == "tuner0"
        assert int(r["epochs"]) == 1 and float(r["seconds"]) > 0 and 0 <= float(r["val_accuracy"]) <= 1
        assert float(r["rss_mb"]) > 100
    info = json.loads((project / "trial_2" / "run_info.json").read_text())
    assert info["tuner_id"] == "tuner0" and info["status"] == "COMPLETED" and info["epochs"] == 1


def test_best_config_loads_and_train_accepts_it(resumed_search):
    from keras_digits.train import build_parser
    from keras_digits.training.flags import config_from_args

    project = resumed_search["project"]
    path = project / "best_config.json"
    data = json.loads(path.read_text())
    cfg = TrainConfig.from_dict(data)
    assert cfg.arch == "simple_cnn" and cfg.dataset == "digits"
    assert cfg.max_train_samples is None and cfg.epochs == TrainConfig().epochs  # the search's budget is left out
    assert set(cfg.model_kwargs) == {"filters", "dense_units", "batch_norm", "conv_dropout", "dense_dropout"}
    load_config_file(path)
    parsed = config_from_args(build_parser().parse_args(["--config", str(path)]))
    assert parsed == cfg
    best = json.loads((project / "best_trial.json").read_text())
    table = {
        line.split("|")[1].strip(): line
        for line in (project / "trials.md").read_text().splitlines()
        if line.startswith("| ")
    }
    assert f"{best['trial_id']} *" in table
    assert cfg.lr == best["hyperparameters"]["lr"] and cfg.optimizer == best["hyperparameters"]["optimizer"]


def test_tensorboard_hparams_logged(resumed_search):
    from tensorboard.backend.event_processing import event_accumulator

    tb = resumed_search["project"] / "tb"
    assert sorted(p.name for p in tb.iterdir()) == ["0", "1", "2"]
    events = next((tb / "2" / "execution0").glob("events.out.tfevents.*"))
    acc = event_accumulator.EventAccumulator(str(events))
    acc.Reload()
    assert "_hparams_/session_start_info" in acc.PluginTagToContent("hparams")


def test_changed_search_is_refused(resumed_search, capsys):
    args = [a if a != "simple_cnn" else "dense" for a in resumed_search["args"]]
    assert run_cli(tune_cli.main, [*args, "--max-trials", "3"]) == 2
    assert "holds a search with arch='simple_cnn'" in capsys.readouterr().err


def test_retrain_best(resumed_search, tmp_path):
    run_dir = tmp_path / "tuned"
    assert (
        run_cli(
            tune_cli.main, [*resumed_search["args"], "--max-trials", "3", "--retrain-best", "--run-dir", str(run_dir)]
        )
        == 0
    )
    assert len(read_trials(resumed_search["project"])) == 3  # the search was complete: no new trial
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert "val" in metrics and "test" in metrics
    cfg = json.loads((run_dir / "config.json").read_text())
    best = json.loads((resumed_search["project"] / "best_config.json").read_text())
    assert {k: cfg[k] for k in best} == best and cfg["max_train_samples"] is None  # the whole training set


@pytest.mark.parametrize(
    "kind",
    [
        pytest.param("bayesian", marks=pytest.mark.slow),  # ~16 s
        pytest.param("hyperband", marks=pytest.mark.slow),
    ],
)
def test_other_tuners(tmp_path, kind):
    args = [
        "--arch",
        "dense",
        *TINY,
        "--tuner",
        kind,
        "--max-trials",
        "3",
        "--directory",
        str(tmp_path),
        "--fixed",
        "augment=none",
    ]
    if kind == "hyperband":
        args[args.index("--max-epochs") + 1] = "2"
    assert run_cli(tune_cli.main, args) == 0
    project = tmp_path / f"digits-dense-{kind}"
    trials = read_trials(project)
    assert len(trials) == 3 and all(t["status"] == "COMPLETED" for t in trials.values())
    assert all(t["hyperparameters"]["values"]["augment"] == "none" for t in trials.values())
    TrainConfig.from_dict(json.loads((project / "best_config.json").read_text()))


# ---------------------------------------------------------------------------- distributed
def start(role: str, port: int, args: list[str], log: Path) -> subprocess.Popen:
    env = {
        **os.environ,
        "KERASTUNER_TUNER_ID": role,
        "KERASTUNER_ORACLE_IP": "127.0.0.1",
        "KERASTUNER_ORACLE_PORT": str(port),
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "keras_digits.tune", *args], env=env, stdout=log.open("w"), stderr=subprocess.STDOUT
    )


def stop_all(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait(timeout=30)


def logs(tmp_path: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text()}" for p in sorted(tmp_path.glob("*.log")))


def test_distributed_chief_and_two_workers(tmp_path):
    port = free_ports(1)[0]
    args = [
        "--arch",
        "simple_cnn",
        *TINY,
        "--max-trials",
        "4",
        "--directory",
        str(tmp_path / "tuning"),
        "--project",
        "dist",
        "--worker-timeout",
        "60",
    ]
    procs = [start("chief", port, args, tmp_path / "chief.log")]
    procs += [start(f"tuner{i}", port, args, tmp_path / f"tuner{i}.log") for i in range(2)]
    try:
        for p in procs:
            assert p.wait(timeout=420) == 0, logs(tmp_path)
    finally:
        stop_all(procs)
    project = tmp_path / "tuning" / "dist"
    trials = read_trials(project)
    assert len(trials) == 4 and all(t["status"] == "COMPLETED" for t in trials.values()), logs(tmp_path)
    workers = {json.loads((project / n / "run_info.json").read_text())["tuner_id"] for n in trials}
    assert workers == {"tuner0", "tuner1"}, logs(tmp_path)
    import csv

    table = list(csv.DictReader((project / "trials.csv").open()))
    assert len(table) == 4 and {r["worker"] for r in table} == {"tuner0", "tuner1"}
    TrainConfig.from_dict(json.loads((project / "best_config.json").read_text()))
    assert "search finished" in (tmp_path / "tuner0.log").read_text()


@pytest.mark.slow  # about a minute: run with -m slow
def test_killed_worker_does_not_stop_the_search(tmp_path):
    """SIGKILL one worker mid-trial: the chief notices the silence and the other worker reruns its trial."""
    port = free_ports(1)[0]
    project = tmp_path / "tuning" / "dist"
    args = [
        "--arch",
        "simple_cnn",
        *TINY,
        "--max-trials",
        "4",
        "--directory",
        str(tmp_path / "tuning"),
        "--project",
        "dist",
        "--worker-timeout",
        "8",
    ]
    chief = start("chief", port, args, tmp_path / "chief.log")
    victim = start("tuner0", port, args, tmp_path / "tuner0.log")
    survivor = start("tuner1", port, args, tmp_path / "tuner1.log")
    procs = [chief, victim, survivor]
    try:
        deadline, killed = time.time() + 240, None
        while killed is None and time.time() < deadline:  # wait for the victim to be inside a trial
            for f in project.glob("trial_*/run_info.json"):
                try:
                    info = json.loads(f.read_text())
                except ValueError:
                    continue
                if info.get("tuner_id") == "tuner0" and info.get("status") == "RUNNING":
                    killed = info["trial_id"]
            time.sleep(0.2)
        assert killed is not None, logs(tmp_path)
        time.sleep(1.0)
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=30)
        assert survivor.wait(timeout=420) == 0, logs(tmp_path)
        assert chief.wait(timeout=60) == 0, logs(tmp_path)
    finally:
        stop_all(procs)
    trials = read_trials(project)
    assert len(trials) == 4 and all(t["status"] == "COMPLETED" for t in trials.values()), logs(tmp_path)
    info = json.loads((project / f"trial_{killed}" / "run_info.json").read_text())
    assert info["tuner_id"] == "tuner1" and info["status"] == "COMPLETED"
    assert [a["tuner_id"] for a in info["attempts"]] == ["tuner0"]
    assert "tuner0 silent" in (tmp_path / "chief.log").read_text()


@pytest.mark.slow
def test_max_rss_restarts_and_resumes(tmp_path):
    """--max-rss-mb below any real RSS: the process re-executes itself after each trial and resumes."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "keras_digits.tune",
            "--arch",
            "dense",
            *TINY,
            "--max-trials",
            "3",
            "--directory",
            str(tmp_path),
            "--max-rss-mb",
            "1",
            "--no-tensorboard",
            "--overwrite",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={k: v for k, v in os.environ.items() if k not in DIST_ENV},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("restarting the process") == 2  # not after the last trial
    trials = read_trials(tmp_path / "digits-dense-random")
    assert len(trials) == 3 and all(t["status"] == "COMPLETED" for t in trials.values())
    assert not (tmp_path / "digits-dense-random" / "tb").exists()
