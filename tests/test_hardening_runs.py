"""Issue #25 (round 3), runs that must not surprise: a multi-worker or tuner/grid worker whose peers never come
says what it waits for, gives up after --worker-wait and ends at once on SIGTERM or Ctrl-C; tune's
best_config.json leaves the search budget out and its trial numbers agree with KerasTuner's; Keras progress
bars only on a terminal."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, free_ports, make_images, tf_config

DIST_ENV = ("KERASTUNER_TUNER_ID", "KERASTUNER_ORACLE_IP", "KERASTUNER_ORACLE_PORT", "TF_CONFIG")


@pytest.fixture
def data_dir(tmp_path) -> Path:
    x, y = make_images(200, (28, 28), 10, seed=1)
    xt, yt = make_images(50, (28, 28), 10, seed=2)
    folder = tmp_path / "data"
    folder.mkdir()
    np.savez_compressed(folder / "mnist.npz", x_train=x, y_train=y, x_test=xt, y_test=yt)
    return folder


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in DIST_ENV}
    return {**env, "TF_CPP_MIN_LOG_LEVEL": "2", **extra}


def start_worker(ports: list[int], index: int, data_dir: Path, tmp_path: Path, *extra: str) -> subprocess.Popen:
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
        "simple_cnn_v1",
        "--batch-size",
        "16",
        "--epochs",
        "1",
        "--run-dir",
        str(tmp_path / "run"),
        *extra,
    ]
    return subprocess.Popen(
        cmd,
        cwd=REPO,
        env=clean_env(TF_CONFIG=tf_config(ports, index)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


class Lines:
    """A process's stdout read line by line in a thread, so a test can wait for one line with a deadline."""

    def __init__(self, proc: subprocess.Popen):
        self.proc, self.lines, self.seen = proc, [], threading.Event()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            self.seen.set()

    def wait_for(self, text: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            hits = [line for line in self.lines if text in line]
            if hits:
                return hits[0]
            if self.proc.poll() is not None and not self.thread.is_alive():
                break
            self.seen.wait(0.2)
            self.seen.clear()
        raise AssertionError(f"no line with {text!r} within {timeout} s; stdout: {self.lines[-20:]}")


def finish(proc: subprocess.Popen, timeout: float) -> tuple[int, str]:
    """(exit code, stderr) of `proc`; killed and failed if it runs past `timeout`."""
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError(f"still running after {timeout} s (killed)") from None
    return proc.returncode, proc.stderr.read()


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:") or "Traceback" in line]


@pytest.fixture
def silent_peer():
    """A port that accepts TCP connections but whose process never joins the cluster."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("localhost", 0))
    sock.listen(8)
    yield sock.getsockname()[1]
    sock.close()


# ---------------------------------------------------------------------------- item 6: multi-worker
def test_worker_alone_says_what_it_waits_for_and_gives_up(tmp_path, data_dir):
    ports = free_ports(2)
    proc = start_worker(ports, 0, data_dir, tmp_path, "--worker-wait", "3")
    out = Lines(proc)
    code, err = finish(proc, timeout=120)
    out.thread.join(5)
    assert f"worker 0: waiting for worker 1 at localhost:{ports[1]} (0 s)" in out.lines, out.lines
    assert code == 2, err
    assert error_lines(err) == [
        f"error: worker 0: gave up after 3 s waiting for worker 1 at localhost:{ports[1]} "
        "(--worker-wait); start every process of the cluster with the same command, or "
        "check the addresses"
    ], err
    assert not (tmp_path / "run").exists()


def test_sigterm_ends_a_waiting_worker_at_once(tmp_path, data_dir):
    ports = free_ports(2)
    proc = start_worker(ports, 0, data_dir, tmp_path)  # default --worker-wait: minutes
    out = Lines(proc)
    try:
        out.wait_for("waiting for worker 1", timeout=90)
    finally:
        proc.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    code, err = finish(proc, timeout=10)
    assert time.monotonic() - sent < 5
    assert code == 143, err
    assert error_lines(err) == [f"error: stopped by SIGTERM while waiting for worker 1 at localhost:{ports[1]}"], err


def test_peer_that_answers_but_never_joins_is_given_up_on(tmp_path, data_dir, silent_peer):
    """Past the TCP wait, TensorFlow's set-up blocks in C++ (no signals, GIL held): a watchdog process ends it."""
    port = free_ports(1)[0]
    proc = start_worker([port, silent_peer], 0, data_dir, tmp_path, "--worker-wait", "3")
    out = Lines(proc)
    out.wait_for("every worker answers", timeout=90)
    started = time.monotonic()
    code, err = finish(proc, timeout=30)
    assert time.monotonic() - started < 12
    assert code != 0
    assert error_lines(err) == [
        "error: worker 0: gave up after 3 s while TensorFlow connected the workers "
        "(--worker-wait): a worker's address answers but its process did not join; restart "
        "every worker"
    ], err


def test_ctrl_c_while_tensorflow_connects_ends_the_worker(tmp_path, data_dir, silent_peer):
    port = free_ports(1)[0]
    proc = start_worker([port, silent_peer], 0, data_dir, tmp_path)
    out = Lines(proc)
    try:
        out.wait_for("every worker answers", timeout=90)
        time.sleep(2.0)  # inside TensorFlow's blocking set-up
    finally:
        proc.send_signal(signal.SIGINT)
    sent = time.monotonic()
    code, err = finish(proc, timeout=15)
    assert time.monotonic() - sent < 6
    assert code != 0
    assert error_lines(err) == ["error: worker 0: stopped by Ctrl-C while TensorFlow connected the workers"], err


@pytest.mark.slow  # two workers training: ~30 s
def test_sigterm_ends_a_training_worker(tmp_path, data_dir):
    """TensorFlow's preemption notifier takes SIGTERM over (it only sets a flag); the worker takes it back."""
    ports = free_ports(2)
    extra = ("--epochs", "200", "--patience", "0", "--verbose", "2")
    procs = [start_worker(ports, i, data_dir, tmp_path, *extra) for i in range(2)]
    outs = [Lines(p) for p in procs]
    try:
        outs[0].wait_for("epoch_seconds", timeout=150)
        procs[0].send_signal(signal.SIGTERM)
        sent = time.monotonic()
        code, err = finish(procs[0], timeout=20)
        assert time.monotonic() - sent < 10
        assert code == 143, err
        assert "error: stopped by SIGTERM" in err
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def test_wait_for_raises_on_sigterm_and_restores_the_handler():
    from keras_digits.runtime.tfconfig import Terminated, wait_for

    port = free_ports(1)[0]
    before = signal.getsignal(signal.SIGTERM)
    timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGTERM))
    timer.start()
    lines: list[str] = []
    start = time.monotonic()
    with pytest.raises(Terminated, match="stopped by SIGTERM while waiting for x at 127.0.0.1") as info:
        wait_for([("x", f"127.0.0.1:{port}")], 60, "me", log=lines.append)
    assert time.monotonic() - start < 3
    assert info.value.exit_code == 143
    assert lines == [f"me: waiting for x at 127.0.0.1:{port} (0 s)"]
    assert signal.getsignal(signal.SIGTERM) == before


def test_worker_wait_is_checked_and_not_part_of_a_runs_identity(capsys):
    from keras_digits.config import TrainConfig, comparable
    from keras_digits.errors import KerasDigitsError
    from keras_digits.studies.grid import parse_vary
    from keras_digits.train import build_parser

    assert TrainConfig().worker_wait == 300
    with pytest.raises(KerasDigitsError, match="--worker-wait must be positive"):
        TrainConfig(worker_wait=0)
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["--worker-wait", "-1"])
    assert info.value.code == 2 and "--worker-wait: must be positive" in capsys.readouterr().err
    assert comparable(TrainConfig(worker_wait=5).to_dict()) == comparable(TrainConfig().to_dict())
    with pytest.raises(KerasDigitsError, match="not a field one can vary"):
        parse_vary(["worker_wait=1,2"])


# ---------------------------------------------------------------------------- item 6: tuner and grid workers
TINY_TUNE = ["--dataset", "digits", "--max-train-samples", "100", "--epochs", "1", "--verbose", "0"]


# tune and sweep share the wait (runtime/oracle.py): the default run checks each command in one of the two
# tests below, `-m slow` the other pairing (each case starts a TensorFlow process: about 10 s)
@pytest.mark.parametrize("command", ["tune", pytest.param("sweep", marks=pytest.mark.slow)])
def test_tuner_or_grid_worker_without_chief_says_so_and_gives_up(tmp_path, command):
    port = free_ports(1)[0]
    env = clean_env(KERASTUNER_TUNER_ID="w0", KERASTUNER_ORACLE_IP="127.0.0.1", KERASTUNER_ORACLE_PORT=str(port))
    args = (
        ["--directory", str(tmp_path / "tuning"), "--max-trials", "2"]
        if command == "tune"
        else ["--vary", "lr=0.001,0.01", "--out", str(tmp_path / "sw")]
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", f"keras_digits.{command}", *TINY_TUNE, *args, "--worker-wait", "2"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out = Lines(proc)
    code, err = finish(proc, timeout=120)
    out.thread.join(5)
    assert f"worker w0: waiting for the chief's oracle at 127.0.0.1:{port} (0 s)" in out.lines, out.lines
    assert code == 2, err
    assert error_lines(err) == [
        f"error: worker w0: gave up after 2 s waiting for the chief's oracle at "
        f"127.0.0.1:{port} (--worker-wait); start every process of the cluster with the "
        "same command, or check the addresses"
    ], err


# ---------------------------------------------------------------------------- item 9: tune surprises
@pytest.fixture
def no_distribution(monkeypatch):
    for name in DIST_ENV:
        monkeypatch.delenv(name, raising=False)


def test_best_config_drops_the_search_budget_and_trial_numbers_agree(tmp_path, capsys, monkeypatch, no_distribution):
    import keras_digits.training.run as train_module
    from keras_digits.config import TrainConfig
    from keras_digits.tune import cli as tune_cli
    from keras_digits.utils.cli import run_cli

    trained = []
    monkeypatch.setattr(
        train_module,
        "train_and_evaluate",
        lambda cfg, run_dir, overwrite=False: trained.append(cfg) or {"val": {"accuracy": 0.5}},
    )
    args = [
        "--dataset",
        "digits",
        "--max-train-samples",
        "100",
        "--max-epochs",
        "1",
        "--verbose",
        "1",
        "--max-trials",
        "1",
        "--directory",
        str(tmp_path),
        "--project",
        "p",
        "--retrain-best",
        "--run-dir",
        str(tmp_path / "best"),
    ]
    assert run_cli(tune_cli.main, args) == 0
    out = capsys.readouterr().out
    assert "Trial 1 Complete" in out  # KerasTuner's own line
    assert "trial 1 done (trial_0, tuner0)" in out, out
    assert "best trial 1 (trial_0)" in out
    assert (
        "best_config.json leaves out the search's budget (--max-train-samples 100, --epochs 1 per trial): "
        "train --config uses the whole training set and its own --epochs (default 15)"
    ) in out

    data = json.loads((tmp_path / "p" / "best_config.json").read_text())
    assert not {"max_train_samples", "epochs", "verbose", "worker_wait"} & set(data)
    from keras_digits.train import build_parser
    from keras_digits.training.flags import config_from_args

    cfg = config_from_args(build_parser().parse_args(["--config", str(tmp_path / "p" / "best_config.json")]))
    assert cfg.max_train_samples is None and cfg.epochs == TrainConfig().epochs
    assert cfg.lr == json.loads((tmp_path / "p" / "best_trial.json").read_text())["hyperparameters"]["lr"]
    info = json.loads((tmp_path / "p" / "best_trial.json").read_text())
    assert info["search_budget"] == {"max_train_samples": 100, "epochs": 1} and info["trial"] == 1
    # --retrain-best trains the searched hyperparameters on the whole training set, for train's epochs
    assert len(trained) == 1
    assert trained[0].max_train_samples is None and trained[0].epochs == TrainConfig().epochs
    assert trained[0].lr == cfg.lr and dict(trained[0].model_kwargs) == dict(cfg.model_kwargs)


# ---------------------------------------------------------------------------- item 10: progress bars in files
def test_fit_verbosity_is_per_epoch_lines_when_stdout_is_not_a_terminal(monkeypatch):
    from keras_digits.config import TrainConfig
    from keras_digits.train import build_parser
    from keras_digits.training.flags import config_from_args

    monkeypatch.setattr(sys, "stdout", open(os.devnull, "w"))
    try:
        assert config_from_args(build_parser().parse_args([])).verbose == 2
        assert config_from_args(build_parser().parse_args(["--verbose", "1"])).verbose == 1  # asked for: kept
        assert TrainConfig.from_dict({"verbose": 0}).verbose == 0
        monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
        assert config_from_args(build_parser().parse_args([])).verbose == 1
    finally:
        sys.stdout.close()


def test_a_run_logged_to_a_file_has_no_progress_bars(tmp_path, data_dir):
    log = tmp_path / "train.log"
    with log.open("w") as out:
        code = subprocess.call(
            [
                sys.executable,
                "-m",
                "keras_digits.train",
                "--dataset",
                "mnist",
                "--data-dir",
                str(data_dir),
                "--arch",
                "simple_cnn_v1",
                "--epochs",
                "2",
                "--max-train-samples",
                "100",
                "--run-dir",
                str(tmp_path / "run"),
            ],
            cwd=REPO,
            env=clean_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=180,
        )
    text = log.read_text()
    assert code == 0, text[-2000:]
    assert "\r" not in text and "\x08" not in text
    assert sum("epoch_seconds" in line or "val_accuracy" in line for line in text.splitlines()) >= 2, text[-2000:]


@pytest.mark.parametrize("command", [pytest.param("tune", marks=pytest.mark.slow), "sweep"])  # see above
def test_tuner_or_grid_worker_whose_chief_never_answers_gives_up_with_one_line(tmp_path, command):
    """A port that accepts connections but never answers (a dead or wedged chief): KerasTuner's client would
    wait an hour in silence; the worker gives up after --worker-wait with one line."""
    import socket
    import threading

    sink = socket.socket()
    sink.bind(("127.0.0.1", 0))
    sink.listen(8)
    port = sink.getsockname()[1]
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        sink.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(sink.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    env = clean_env(KERASTUNER_TUNER_ID="w0", KERASTUNER_ORACLE_IP="127.0.0.1", KERASTUNER_ORACLE_PORT=str(port))
    args = (
        ["--directory", str(tmp_path / "tuning"), "--max-trials", "2"]
        if command == "tune"
        else ["--vary", "lr=0.001,0.01", "--out", str(tmp_path / "sw")]
    )
    try:
        proc = subprocess.run(
            [sys.executable, "-m", f"keras_digits.{command}", *TINY_TUNE, *args, "--worker-wait", "3"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=150,
        )
    finally:
        stop.set()
        thread.join(2)
        for conn in held:
            conn.close()
        sink.close()
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    text = proc.stdout + proc.stderr
    if command == "tune":
        assert proc.returncode == 2, text[-3000:]
        assert f"error: worker w0: lost the chief's oracle at 127.0.0.1:{port} (DEADLINE_EXCEEDED" in proc.stderr
    else:
        assert proc.returncode == 2, text[-3000:]
        assert f"error: worker w0: cannot reach the chief at 127.0.0.1:{port} (DEADLINE_EXCEEDED" in proc.stderr
