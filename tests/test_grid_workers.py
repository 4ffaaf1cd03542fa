"""A sweep spread over worker processes (KerasTuner's oracle as the engine): one chief and two workers
on loopback give the same sweep.md as one process; a killed worker's run is finished by the other."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import free_ports, make_images, one_error_line, run_main

SWEEP = [
    "--dataset",
    "mnist",
    "--arch",
    "simple_cnn_v1",
    "--max-train-samples",
    "150",
    "--batch-size",
    "16",
    "--deterministic",
    "--vary",
    "lr=0.001,0.003,0.01",
    "--seeds",
    "2",
    "--out",
    "sw",
]


@pytest.fixture
def data_dir(tmp_path) -> Path:
    x, y = make_images(400, (28, 28), 10, seed=5)
    x = (x // 3 + np.random.default_rng(0).integers(0, 160, x.shape)).astype(np.uint8)  # not trivially learnt
    xt, yt = make_images(150, (28, 28), 10, seed=6)
    folder = tmp_path / "data"
    folder.mkdir()
    np.savez_compressed(folder / "mnist.npz", x_train=x, y_train=y, x_test=xt, y_test=yt)
    return folder


def start(role: str, port: int, cwd: Path, data_dir: Path, epochs: int, extra=()) -> subprocess.Popen:
    env = {
        **os.environ,
        "KERASTUNER_TUNER_ID": role,
        "KERASTUNER_ORACLE_IP": "127.0.0.1",
        "KERASTUNER_ORACLE_PORT": str(port),
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    cmd = [
        sys.executable,
        "-m",
        "keras_digits.sweep",
        *SWEEP,
        "--data-dir",
        str(data_dir),
        "--epochs",
        str(epochs),
        *extra,
    ]
    out = open(cwd / f"{role}.log", "wb")
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)


def without_seconds(md: str) -> str:
    """sweep.md less its training-seconds column (wall time is never reproducible)."""
    return "\n".join(re.sub(r"\| [\d.]+ \|$", "| - |", line) for line in md.splitlines())


def test_sweep_over_two_workers_equals_one_process(tmp_path, data_dir):
    dist, single = tmp_path / "dist", tmp_path / "single"
    dist.mkdir()
    single.mkdir()
    port = free_ports(1)[0]
    procs = [start("chief", port, dist, data_dir, 1, ["--worker-timeout", "30"])]
    procs += [start(f"worker{i}", port, dist, data_dir, 1) for i in range(2)]
    codes = [p.wait(timeout=400) for p in procs]
    assert codes == [0, 0, 0], (dist / "chief.log").read_text()[-3000:]
    trained = [
        m for i in range(2) for m in re.findall(r"\] (lr=\S+ seed \d+): val", (dist / f"worker{i}.log").read_text())
    ]
    assert len(trained) == 6 and len(set(trained)) == 6  # every run trained exactly once, by one worker or the other
    chief_log = (dist / "chief.log").read_text()
    assert chief_log.count("done before, read back") == 6 and ": val " not in chief_log  # the chief trained none
    subprocess.run(
        [sys.executable, "-m", "keras_digits.sweep", *SWEEP, "--data-dir", str(data_dir), "--epochs", "1"],
        cwd=single,
        check=True,
        capture_output=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    a, b = ((d / "sw" / "sweep.md").read_text() for d in (dist, single))
    assert without_seconds(a) == without_seconds(b)
    assert len(set(re.findall(r"\d\.\d{4} ±", a))) > 1  # the accuracies differ between settings: a real table


@pytest.mark.slow  # ~45 s; docs/distributed.md's loopback check of a lost grid worker
def test_killed_worker_run_is_redone_by_another(tmp_path, data_dir):
    port = free_ports(1)[0]
    chief = start("chief", port, tmp_path, data_dir, 6, ["--worker-timeout", "10"])
    victim = start("worker0", port, tmp_path, data_dir, 6)
    deadline, held = time.monotonic() + 180, None
    while time.monotonic() < deadline and held is None:  # wait until worker0 is inside a run, past epoch 1
        for lock in (tmp_path / "sw" / "runs").glob(".*.lock") if (tmp_path / "sw" / "runs").exists() else []:
            try:
                holder = json.loads(lock.read_text() or "{}")
            except ValueError:
                continue
            run = lock.parent / lock.name[1 : -len(".lock")]
            history = run / "history.csv"
            if (
                holder.get("pid") == victim.pid
                and history.exists()
                and len(history.read_text().splitlines()) >= 2
                and not (run / "metrics.json").exists()
            ):
                held = run
        time.sleep(0.2)
    assert held is not None, (tmp_path / "worker0.log").read_text()[-3000:]
    victim.kill()
    victim.wait()
    text = (held / "history.csv").read_text()
    before = text.splitlines() if text.endswith("\n") else text.splitlines()[:-1]  # complete rows only
    helper = start("worker1", port, tmp_path, data_dir, 6)
    codes = helper.wait(timeout=400), chief.wait(timeout=60)
    assert codes == (0, 0), (
        codes,
        (tmp_path / "chief.log").read_text()[-3000:],
        (tmp_path / "worker1.log").read_text()[-3000:],
    )
    assert "considered lost" in (tmp_path / "chief.log").read_text()
    for run in (tmp_path / "sw" / "runs").iterdir():
        if run.is_dir():
            epochs = [int(r.split(",")[0]) for r in (run / "history.csv").read_text().splitlines()[1:]]
            assert epochs == sorted(set(epochs)) and (run / "metrics.json").is_file(), run
    after = (held / "history.csv").read_text().splitlines()
    assert after[: len(before)] == before and len(after) == 7  # resumed: its finished epochs were kept
    assert (tmp_path / "sw" / "sweep.md").is_file()


def test_worker_timeout_too_short_is_one_line(tmp_path, capsys, monkeypatch, data_dir):
    from keras_digits.sweep import main

    monkeypatch.setenv("KERASTUNER_TUNER_ID", "chief")
    monkeypatch.setenv("KERASTUNER_ORACLE_IP", "127.0.0.1")
    monkeypatch.setenv("KERASTUNER_ORACLE_PORT", str(free_ports(1)[0]))
    code, _, err = run_main(
        main, [*SWEEP[:-1], tmp_path / "sw", "--data-dir", data_dir, "--worker-timeout", "2"], capsys
    )
    assert code == 2 and "--worker-timeout must be at least 10" in one_error_line(err)


@pytest.mark.parametrize("module", ["sweep", "tune"])
def test_multiworker_strategy_is_for_train_only(tmp_path, capsys, data_dir, module):
    import importlib

    main = importlib.import_module("keras_digits.sweep" if module == "sweep" else "keras_digits.tune.cli").main
    args = ["--dataset", "mnist", "--data-dir", data_dir, "--strategy", "multiworker"]
    args += ["--vary", "lr=0.1", "--out", tmp_path / "sw"] if module == "sweep" else ["--directory", tmp_path / "t"]
    code, _, err = run_main(main, args, capsys)
    assert code == 2 and "--strategy multiworker is for one train run" in one_error_line(err)
