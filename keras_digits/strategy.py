"""Distribution strategy (`--strategy`) and the mixed-precision output guard.

`get_strategy(name)`:

* ``auto``: ``tf.distribute.MirroredStrategy`` over all GPUs when more than one is visible, else the
  default (no-op) strategy;
* ``mirrored``: MirroredStrategy over the visible GPUs, or over the logical CPU devices when there
  is no GPU (one replica on a plain CPU; see ``KERAS_DIGITS_LOGICAL_CPUS``);
* ``default``: the default strategy, one device;
* ``multiworker``: ``tf.distribute.MultiWorkerMirroredStrategy`` over the processes TF_CONFIG lists
  (checked first by keras_digits.tfconfig); trained by keras_digits.distributed_fit, since Keras 3's
  ``fit`` fails under it.

With N replicas `--batch-size` is the per-replica batch: the pipelines yield global batches of
batch_size x N (`keras_digits.data.datasets.make_datasets(..., replicas=N)`); the learning rate is
not rescaled. The model is built and compiled inside ``strategy.scope()``.

``KERAS_DIGITS_LOGICAL_CPUS=N`` splits the (first) physical CPU into N logical devices before
TensorFlow initialises its devices, so MirroredStrategy can be exercised without GPUs (tests, CI).
It has to be set before the process first touches a TensorFlow device (use a fresh process).
"""

from __future__ import annotations

import os
import sys

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
        print(f"note: {LOGICAL_CPUS_ENV}={n} ignored: TensorFlow had already set up {have} CPU device(s) "
              "in this process", file=sys.stderr)
    return have


def multiworker_strategy(verbose: int = 0):
    """MultiWorkerMirroredStrategy from a checked TF_CONFIG; the strategy carries its task as `.task`."""
    import tensorflow as tf

    from keras_digits.tfconfig import task_from_env

    task = task_from_env()
    if verbose:
        print(f"strategy: MultiWorkerMirroredStrategy, {task.name} of {task.num_workers} worker(s)"
              + (" (chief)" if task.is_chief else "") + "; waiting for every worker to join", flush=True)
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    strategy.task = task
    return strategy


def worker_task(strategy):
    """The TF_CONFIG task of a multi-worker strategy (keras_digits.tfconfig.Task), else None."""
    return getattr(strategy, "task", None)


def get_strategy(name: str = "auto", verbose: int = 0):
    """The tf.distribute strategy for --strategy (see the module docstring)."""
    import tensorflow as tf

    if name not in ("auto", "mirrored", "default", "multiworker"):
        raise KerasDigitsError(f"unknown strategy {name!r}; choose one of: auto, mirrored, default, multiworker")
    if name == "multiworker":
        return multiworker_strategy(verbose)
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
