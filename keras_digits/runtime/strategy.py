"""Distribution strategy (`--strategy`) and the mixed-precision output guard.

`get_strategy(name)`:

* ``auto``: ``tf.distribute.MirroredStrategy`` over all GPUs when more than one is visible, else the
  default (no-op) strategy;
* ``mirrored``: MirroredStrategy over the visible GPUs, or over the logical CPU devices when there
  is no GPU (one replica on a plain CPU; see ``KERAS_DIGITS_LOGICAL_CPUS``);
* ``default``: the default strategy, one device;
* ``multiworker``: ``tf.distribute.MultiWorkerMirroredStrategy`` over the processes TF_CONFIG lists
  (checked first by keras_digits.runtime.tfconfig); trained by keras_digits.training.distributed_fit, since Keras 3's
  ``fit`` fails under it.

With N replicas `--batch-size` is the per-replica batch: the pipelines yield global batches of
batch_size x N (`keras_digits.data.datasets.make_datasets(..., replicas=N)`); the learning rate is
not rescaled. The model is built and compiled inside ``strategy.scope()``.

``KERAS_DIGITS_LOGICAL_CPUS=N`` splits the (first) physical CPU into N logical devices before
TensorFlow initialises its devices, so MirroredStrategy can be exercised without GPUs (tests, CI).
It has to be set before the process first touches a TensorFlow device (use a fresh process).
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Iterator

from keras_digits.errors import KerasDigitsError

LOGICAL_CPUS_ENV = "KERAS_DIGITS_LOGICAL_CPUS"


def configure_logical_cpus() -> int | None:
    """Apply KERAS_DIGITS_LOGICAL_CPUS (if set); returns the number of logical CPUs now visible."""
    text = os.environ.get(LOGICAL_CPUS_ENV, "").strip()
    if not text:
        return None
    try:
        n = int(text)
    except ValueError:
        raise KerasDigitsError(f"{LOGICAL_CPUS_ENV} must be a whole number, got {text!r}") from None
    if n < 1:
        raise KerasDigitsError(f"{LOGICAL_CPUS_ENV} must be at least 1, got {n}")
    import tensorflow as tf

    cpus = tf.config.list_physical_devices("CPU")
    try:
        if len(tf.config.get_logical_device_configuration(cpus[0]) or []) != n and n > 1:
            tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * n)
    except RuntimeError:  # devices already initialised in this process
        pass
    have = len(tf.config.list_logical_devices("CPU"))
    if have != n and n > 1:
        print(
            f"note: {LOGICAL_CPUS_ENV}={n} ignored: TensorFlow had already set up {have} CPU device(s) in this process",
            file=sys.stderr,
        )
    return have


# Run in a child process while TensorFlow joins the cluster: that C++ call holds the GIL and sees no signals.
_WATCHDOG = r"""
import os, select, signal, sys, time
signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C reaches the parent through the wakeup fd
parent, wakeup, limit, who = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
names = {int(signal.SIGINT): "Ctrl-C", int(signal.SIGTERM): "SIGTERM"}
end = time.monotonic() + limit
while True:
    ready = select.select([0, wakeup], [], [], max(0.0, end - time.monotonic()))[0]
    if 0 in ready:
        sys.exit(0)  # the parent is through (it wrote), or gone (EOF)
    if wakeup in ready:
        got = [names[b] for b in os.read(wakeup, 64) if b in names]
        if not got:
            continue
        if select.select([0], [], [], 1.0)[0]:
            sys.exit(0)  # the parent came back and handles the signal itself
        line = f"error: {who}: stopped by {got[0]} while TensorFlow connected the workers"
        code = 143 if got[0] == "SIGTERM" else 130
    else:
        line = (f"error: {who}: gave up after {limit:g} s while TensorFlow connected the workers (--worker-wait): "
                "a worker's address answers but its process did not join; restart every worker")
        code = 2
    print(line, file=sys.stderr, flush=True)
    os.kill(parent, signal.SIGKILL)
    sys.exit(code)
"""


@contextlib.contextmanager
def _watchdog(who: str, limit_s: float) -> Iterator[None]:
    """While inside, a child process ends this one with one line on Ctrl-C, on a SIGTERM that TensorFlow has
    not yet taken over, or after `limit_s` seconds (the blocking part of joining the cluster)."""
    import signal
    import subprocess

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    child = subprocess.Popen(
        [sys.executable, "-c", _WATCHDOG, str(os.getpid()), str(read_fd), str(limit_s), who],
        stdin=subprocess.PIPE,
        pass_fds=(read_fd,),
    )
    os.close(read_fd)
    previous_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    try:
        yield
    finally:
        signal.set_wakeup_fd(previous_fd)
        os.close(write_fd)
        with contextlib.suppress(OSError):
            child.stdin.write(b"done")
            child.stdin.close()
        child.wait()


def _terminate(signum: int, frame: object) -> None:
    from keras_digits.runtime.tfconfig import Terminated

    raise Terminated("stopped by SIGTERM")


def multiworker_strategy(verbose: int = 0, wait_s: float | None = None):
    """(MultiWorkerMirroredStrategy, this worker's TF_CONFIG task) from a checked TF_CONFIG, once every worker
    answers (at most `wait_s` seconds, --worker-wait)."""
    import signal

    import tensorflow as tf

    from keras_digits.runtime.tfconfig import (
        DEFAULT_WORKER_WAIT,
        label,
        sigterm_raises,
        task_from_env,
        wait_for_workers,
    )

    wait_s = DEFAULT_WORKER_WAIT if wait_s is None else wait_s
    task = task_from_env()
    who = label(task.name)
    if verbose:
        print(
            f"strategy: MultiWorkerMirroredStrategy, {task.name} of {task.num_workers} worker(s)"
            + (" (chief)" if task.is_chief else "")
            + "; waiting for every worker to join",
            flush=True,
        )
    waited = wait_for_workers(task, wait_s)
    if verbose:
        print(f"{who}: every worker answers ({waited:.0f} s); TensorFlow connects them", flush=True)
    with sigterm_raises("TensorFlow connected the workers"), _watchdog(who, wait_s):
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    # TensorFlow's preemption notifier took SIGTERM over (it only sets a flag): make it end the run again
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate)
    return strategy, task


def get_strategy(name: str = "auto", verbose: int = 0, worker_wait: float | None = None):
    """The tf.distribute strategy for --strategy (see the module docstring)."""
    import tensorflow as tf

    if name not in ("auto", "mirrored", "default", "multiworker"):
        raise KerasDigitsError(f"unknown strategy {name!r}; choose one of: auto, mirrored, default, multiworker")
    if name == "multiworker":  # a training run takes the task too: keras_digits.training.role.RunRole
        return multiworker_strategy(verbose, worker_wait)[0]
    configure_logical_cpus()
    gpus = tf.config.list_logical_devices("GPU")
    if name == "default" or (name == "auto" and len(gpus) < 2):
        return tf.distribute.get_strategy()
    devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
    strategy = tf.distribute.MirroredStrategy(devices=devices)
    if verbose:
        print(f"strategy: MirroredStrategy, {strategy.num_replicas_in_sync} replica(s) on {', '.join(devices)}")
    return strategy


def replicas(strategy) -> int:
    """Replicas in sync of a strategy (1 for the default one)."""
    return int(getattr(strategy, "num_replicas_in_sync", 1) or 1)


def float32_outputs(model):
    """Under a mixed-precision policy, compute the model's output layer (its softmax) in float32.

    Keras computes a mixed model's layers in bfloat16/float16: a softmax there returns probabilities
    that sum to 1 only within ~1e-3 and are coarse near 0 and 1. The layer that produces the output
    (looked up through nested models) gets the float32 policy, as Keras' mixed-precision guide
    advises, and ``Activation('linear', dtype='float32')`` ('predictions_float32') is appended so the
    symbolic output is float32 too. Loss scaling is added by ``model.compile`` itself under
    mixed_float16. A float32 model is returned unchanged."""
    import keras

    out = model.outputs[0]
    if len(model.outputs) != 1 or str(out.dtype) == "float32":
        return model
    layer = out._keras_history[0]
    while isinstance(layer, keras.Model) and len(layer.outputs) == 1:
        layer = layer.outputs[0]._keras_history[0]
    layer.dtype_policy = keras.DTypePolicy("float32")
    cast = keras.layers.Activation("linear", dtype="float32", name="predictions_float32")(out)
    return keras.Model(model.inputs, cast, name=model.name)
