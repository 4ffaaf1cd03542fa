"""Multi-worker training (--strategy multiworker, TF_CONFIG) with two worker processes on loopback:
identical weights, the chief's complete run directory, a killed worker stopping the other, a restart
resuming from the last finished epoch, and bad TF_CONFIG values as one line each."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, free_ports, make_images, one_error_line, run_main, tf_config


@pytest.fixture
def data_dir(tmp_path) -> Path:
    x, y = make_images(600, (28, 28), 10, seed=1)
    xt, yt = make_images(200, (28, 28), 10, seed=2)
    folder = tmp_path / "data"
    folder.mkdir()
    np.savez_compressed(folder / "mnist.npz", x_train=x, y_train=y, x_test=xt, y_test=yt)
    return folder


def start_workers(
    ports, run_dir: Path, data_dir: Path, epochs: int, logs: Path, arch: str = "simple_cnn_v1"
) -> list[subprocess.Popen]:
    procs = []
    for i in range(len(ports)):
        env = {**os.environ, "TF_CONFIG": tf_config(ports, i), "TF_CPP_MIN_LOG_LEVEL": "2"}
        cmd = [
            sys.executable,
            "-m",
            "keras_digits.train",
            "--strategy",
            "multiworker",
            "--dataset",
            "mnist",
            "--data-dir",
            str(data_dir),
            "--arch",
            arch,
            "--batch-size",
            "16",
            "--epochs",
            str(epochs),
            "--patience",
            "0",
            "--seed",
            "3",
            "--deterministic",
            "--verbose",
            "2",
            "--run-dir",
            str(run_dir),
        ]
        with open(logs / f"worker{i}.log", "ab") as out:
            procs.append(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT))
    return procs


def wait_all(procs, timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    codes = []
    for p in procs:
        try:
            codes.append(p.wait(timeout=max(1.0, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
    return codes


def digest(log: Path) -> str:
    lines = [line for line in log.read_text().splitlines() if "weights digest" in line]
    assert lines, log.read_text()[-3000:]
    return lines[-1].rsplit(" ", 1)[-1]


@pytest.mark.parametrize(
    "value,message",
    [
        ("{not json", "TF_CONFIG is not valid JSON"),
        ('{"cluster": {"worker": ["localhost:1"]}, "task": {"type": "ps", "index": 0}}', "task type 'ps' is unknown"),
        (
            '{"cluster": {"worker": ["localhost:1"]}, "task": {"type": "worker", "index": 3}}',
            "this host is not in the cluster",
        ),
        (
            '{"cluster": {"worker": ["192.0.2.1:2222"]}, "task": {"type": "worker", "index": 0}}',
            "not an address of this machine",
        ),
        (
            '{"cluster": {"worker": ["localhost:1"], "ps": ["localhost:2"]}, "task": {"type": "worker", "index": 0}}',
            "no parameter servers",
        ),
        (None, "needs the TF_CONFIG environment variable"),
        (
            '{"cluster": {"worker": ["localhost:5", "localhost:5"]}, "task": {"type": "worker", "index": 0}}',
            "more than once",
        ),
        ('{"cluster": {"worker": ["localhost:5"]}, "task": {"type": "worker"}}', 'task "index" must be a whole number'),
    ],
)
def test_bad_tf_config_is_one_line(tmp_path, monkeypatch, capsys, data_dir, value, message):
    from keras_digits.train import main

    if value is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", value)
    code, _, err = run_main(
        main,
        ["--strategy", "multiworker", "--dataset", "mnist", "--data-dir", data_dir, "--run-dir", tmp_path / "run"],
        capsys,
    )
    assert code == 2 and message in one_error_line(err)
    assert not (tmp_path / "run").exists()


def test_tf_config_port_in_use_is_one_line(tmp_path, monkeypatch, capsys, data_dir):
    from keras_digits.train import main

    with socket.socket() as busy:
        busy.bind(("localhost", 0))
        busy.listen()
        port = busy.getsockname()[1]
        monkeypatch.setenv("TF_CONFIG", tf_config([port], 0))
        code, _, err = run_main(
            main,
            ["--strategy", "multiworker", "--dataset", "mnist", "--data-dir", data_dir, "--run-dir", tmp_path / "run"],
            capsys,
        )
    assert code == 2 and f"port {port} is in use" in one_error_line(err)


def test_tf_config_chief_and_ranks():
    from keras_digits.runtime.tfconfig import parse

    cluster = {"chief": ["a:1"], "worker": ["b:1", "c:1"]}
    chief = parse(json.dumps({"cluster": cluster, "task": {"type": "chief", "index": 0}}))
    worker = parse(json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 1}}))
    assert chief.is_chief and not worker.is_chief and worker.rank == 2 and chief.num_workers == 3
    plain = parse(json.dumps({"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 0}}))
    assert plain.is_chief  # worker 0 is the chief where there is no "chief" task


def test_two_workers_train_identical_weights(tmp_path, data_dir):
    run = tmp_path / "run"
    # simple_cnn has BatchNorm: 16 steps per epoch at momentum 0.9 turn precise BN on (auto); each worker
    # recomputes the statistics, then the workers average them, so the weights still agree
    procs = start_workers(free_ports(2), run, data_dir, epochs=3, logs=tmp_path, arch="simple_cnn")
    assert wait_all(procs, 240) == [0, 0], (tmp_path / "worker0.log").read_text()[-3000:]
    assert digest(tmp_path / "worker0.log") == digest(tmp_path / "worker1.log")
    assert "precise BatchNorm before each validation" in (tmp_path / "worker0.log").read_text()
    for name in ("best.keras", "history.csv", "metrics.json", "report.html", "config.json", "logs"):
        assert (run / name).exists(), name
    assert json.loads((run / "config.json").read_text())["strategy"] == "multiworker"
    history = (run / "history.csv").read_text().splitlines()
    assert len(history) == 4  # header + 3 epochs, written by the chief alone
    assert "precise_bn_seconds" in history[0]
    assert not list(tmp_path.glob(".run.worker-*"))  # the other worker's resume folder is gone
    assert "the chief writes and scores" in (tmp_path / "worker1.log").read_text()


@pytest.mark.slow  # ~47 s; two-worker training stays in the default run (test_two_workers_train_identical_weights)
def test_killed_worker_stops_the_other_and_a_restart_resumes(tmp_path, data_dir):
    run = tmp_path / "run"
    procs = start_workers(free_ports(2), run, data_dir, epochs=8, logs=tmp_path)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:  # wait for two finished epochs
        history = run / "history.csv"
        if history.exists() and len(history.read_text().splitlines()) >= 3:
            break
        assert all(p.poll() is None for p in procs), (tmp_path / "worker0.log").read_text()[-3000:]
        time.sleep(0.2)
    time.sleep(0.5)  # into the third epoch (an epoch takes over a second here), not at an epoch's end
    procs[1].kill()
    killed = time.monotonic()
    code = procs[0].wait(timeout=90)
    assert time.monotonic() - killed < 90
    log0 = (tmp_path / "worker0.log").read_text()
    assert code != 0 and "error: lost contact with another worker" in log0, log0[-3000:]
    done = len((run / "history.csv").read_text().splitlines()) - 1
    assert not (run / "metrics.json").exists()

    ports = free_ports(2)
    procs = start_workers(ports, run, data_dir, epochs=8, logs=tmp_path)
    assert wait_all(procs, 240) == [0, 0], (tmp_path / "worker0.log").read_text()[-3000:]
    epochs = [int(line.split(",")[0]) for line in (run / "history.csv").read_text().splitlines()[1:]]
    assert epochs == list(range(8))  # each epoch once: the restart went on from epoch `done`
    assert done >= 2 and f"Epoch {done + 1}/8" in (tmp_path / "worker0.log").read_text().split("lost contact")[-1]
    assert digest(tmp_path / "worker0.log") == digest(tmp_path / "worker1.log")
    assert json.loads((run / "metrics.json").read_text())["status"] == "finished"


def test_a_worker_that_cannot_start_tells_the_others(tmp_path, data_dir):
    """The chief finds a finished run (no --overwrite): it says so, and the other worker says that another
    worker could not start, both at once instead of waiting for each other."""
    from keras_digits.train import main

    run = tmp_path / "run"
    assert (
        main(
            [
                "--dataset",
                "mnist",
                "--data-dir",
                str(data_dir),
                "--arch",
                "simple_cnn_v1",
                "--epochs",
                "1",
                "--max-train-samples",
                "100",
                "--verbose",
                "0",
                "--run-dir",
                str(run),
            ]
        )
        == 0
    )
    start = time.monotonic()
    procs = start_workers(free_ports(2), run, data_dir, epochs=1, logs=tmp_path)
    assert wait_all(procs, 120) == [2, 2]
    assert time.monotonic() - start < 60
    assert "already holds a finished run" in (tmp_path / "worker0.log").read_text()
    assert "another worker could not start this run" in (tmp_path / "worker1.log").read_text()
