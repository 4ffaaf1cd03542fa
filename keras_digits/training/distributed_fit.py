"""Training under tf.distribute.MultiWorkerMirroredStrategy without `model.fit`.

Keras 3's `fit` fails under this strategy ("Attempt to convert a value (PerReplica...) with an
unsupported type", keras-team/keras#20585), while a step run with `strategy.run` on a Keras model and
optimizer works. `distributed_fit` is that loop, driving the run's ordinary Keras callbacks (the
same list `model.fit` gets: checkpoint, history.csv, TensorBoard, early stopping, backup and restore,
schedules) through a CallbackList, so a multi-worker run directory looks like any other.

Every worker runs the same code and the same callbacks (non-chief workers into a private folder that
is deleted when training ends): saving and restoring then happen on all workers alike, as
TensorFlow's multi-worker guide asks. What decides anything is identical everywhere:
- training loss and accuracy are all-reduced sums over the global batch;
- BatchNormalization's moving statistics (updated per replica from its own sub-batch) are averaged
  over replicas at each epoch's end, so all workers hold identical weights;
- validation is scored by each worker on the whole validation split and the figures all-reduced
  (averaged), so checkpoint and early-stopping choices agree.
The chief's state is the authority: at the start its epoch (from its BackupAndRestore folder), weights and
optimizer state are sent to every worker, and at each epoch's end all workers stop when the chief does
(early stopping; divergence is seen alike everywhere). A lost worker makes the next collective fail (TensorFlow's
coordination service notices its missing heartbeats, about 10 s; a closed connection at once); that
becomes one error saying to restart every worker, which resumes from the chief's last finished epoch.
"""

from __future__ import annotations

import contextlib
import hashlib
from typing import Any

import numpy as np

from keras_digits.errors import KerasDigitsError

LOST_PEER_ERRORS = ("UnavailableError", "CancelledError", "DeadlineExceededError", "AbortedError", "InternalError")


class LostWorker(KerasDigitsError):
    """A collective failed: another worker died or became unreachable. `cause` names TensorFlow's error;
    `epoch` (0-based), where known, is the epoch that was running."""

    def __init__(self, cause: str, epoch: int | None = None):
        self.cause = cause
        if epoch is None:
            super().__init__(
                f"lost contact with another worker while the workers were agreeing ({cause}); restart "
                "every worker with the same command to resume from the last finished epoch"
            )
        else:
            super().__init__(
                f"lost contact with another worker during epoch {epoch + 1} ({cause}): training stopped "
                f"after {epoch} finished epoch(s); restart every worker with the same command to resume "
                "from there"
            )


def _local_replicas(strategy) -> int:
    return max(1, len(getattr(strategy.extended, "worker_devices", ()) or ()))


def collective(fn):
    """Run `fn()` (which uses collectives), turning a failed collective into LostWorker."""
    import tensorflow as tf

    try:
        return fn()
    except tf.errors.OpError as exc:
        if type(exc).__name__ not in LOST_PEER_ERRORS:
            raise
        raise LostWorker(type(exc).__name__) from None


def chief_values(strategy, is_chief: bool, values) -> np.ndarray:
    """The chief's `values` (floats), on every worker: an all-reduced sum of the chief's and zeros."""
    import tensorflow as tf

    local = np.asarray(values, np.float64) * (1.0 if is_chief else 0.0) / _local_replicas(strategy)
    out = collective(lambda: strategy.reduce("SUM", strategy.run(lambda: tf.constant(local)), axis=None))
    return np.asarray(out, np.float64)


def all_ok(strategy, ok: bool) -> bool:
    """True on every worker when every worker passed `ok=True` (a barrier too)."""
    import tensorflow as tf

    flag = tf.constant(1.0 if ok else 0.0, tf.float64)
    out = collective(lambda: strategy.reduce("MEAN", strategy.run(lambda: tf.identity(flag)), axis=None))
    return float(out) > 1.0 - 1e-9


def agreed_start(strategy, start):
    """`start()` (taking and preparing the run directory) on every worker; when it fails on one, that one
    raises its own error and every other worker one line saying so, instead of waiting for it."""
    try:
        out = start()
    except Exception:
        with contextlib.suppress(LostWorker):  # keep this worker's own error even if the others are gone
            all_ok(strategy, False)
        raise
    if not all_ok(strategy, True):
        raise KerasDigitsError(
            "another worker could not start this run (its own error says why); fix that and restart every worker"
        )
    return out


def broadcast_from_chief(strategy, is_chief: bool, variables) -> None:
    """Give every worker the chief's values of `variables` (model and optimizer state)."""
    import tensorflow as tf

    share = (1.0 if is_chief else 0.0) / _local_replicas(strategy)

    def replica():
        ctx = tf.distribute.get_replica_context()
        for v in variables:
            value = tf.cast(tf.identity(v.value), tf.float64) * share
            total = ctx.all_reduce("SUM", value)
            v.assign(tf.cast(total if "float" in str(v.dtype) else tf.round(total), v.dtype))  # counters stay exact

    collective(lambda: tf.function(lambda: strategy.run(replica))())


def weights_digest(model) -> str:
    """12 hex digits of SHA-256 over the model's weights (equal on every worker after a run)."""
    h = hashlib.sha256()
    for w in model.get_weights():
        h.update(np.ascontiguousarray(w).tobytes())
    return h.hexdigest()[:12]


def _distribute(strategy, dataset):
    import tensorflow as tf

    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return strategy.experimental_distribute_dataset(dataset.with_options(options))


class Steps:
    """The compiled per-replica functions of one model under one strategy."""

    def __init__(self, model, strategy, global_batch: int, class_weight: dict[int, float] | None):
        import keras
        import tensorflow as tf

        self.model, self.strategy, self.global_batch = model, strategy, global_batch
        optimizer = model.optimizer
        loss_fn = model.loss.call if isinstance(model.loss, keras.losses.Loss) else keras.losses.get(model.loss)
        self.loss_fn = loss_fn  # per-example losses
        weights = None
        if class_weight:
            table = np.ones(max(class_weight) + 1, np.float32)
            for k, v in class_weight.items():
                table[int(k)] = v
            weights = tf.constant(table)
        with strategy.scope():
            if not optimizer.built:
                optimizer.build(model.trainable_variables)

        def replica_step(x, y):
            with tf.GradientTape() as tape:
                probs = model(x, training=True)
                per_example = tf.cast(loss_fn(y, probs), tf.float32)
                weighted = per_example * tf.gather(weights, y) if weights is not None else per_example
                loss = tf.nn.compute_average_loss(weighted, global_batch_size=global_batch)
                if model.losses:
                    loss += tf.nn.scale_regularization_loss(tf.add_n(model.losses))
                scaled = optimizer.scale_loss(loss) if hasattr(optimizer, "scale_loss") else loss
            grads = tape.gradient(scaled, model.trainable_variables)
            optimizer.apply_gradients(zip(grads, model.trainable_variables))
            correct = tf.reduce_sum(
                tf.cast(tf.equal(tf.argmax(probs, axis=-1, output_type=tf.int32), tf.cast(y, tf.int32)), tf.float32)
            )
            return tf.stack([tf.reduce_sum(per_example), correct, tf.cast(tf.shape(y)[0], tf.float32)])

        @tf.function
        def train_step(batch):
            per_replica = strategy.run(replica_step, args=batch)
            return strategy.reduce("SUM", per_replica, axis=None)

        stats = [v for v in model.non_trainable_variables if "float" in str(v.dtype)]

        def replica_sync():
            ctx = tf.distribute.get_replica_context()
            for v in stats:
                v.assign(ctx.all_reduce("MEAN", tf.identity(v.value)))

        @tf.function
        def sync_stats():
            strategy.run(replica_sync)

        @tf.function
        def agree(values):
            return strategy.reduce("MEAN", strategy.run(lambda: tf.identity(values)), axis=None)

        @tf.function
        def predict(x):
            return model(x, training=False)

        self.train_step, self.sync_stats, self.agree, self.predict = train_step, sync_stats, agree, predict


def _validate(steps: Steps, val, labels: np.ndarray, select_on: str) -> dict[str, float]:
    """Loss, accuracy (and AUC) of the whole validation split, scored locally, then averaged over workers."""
    import tensorflow as tf

    from keras_digits.evaluation.auc import macro_auc

    probs = np.concatenate([np.asarray(steps.predict(x)) for x, _ in val])
    loss = float(np.mean(np.asarray(steps.loss_fn(tf.constant(labels), tf.constant(probs)))))
    acc = float(np.mean(probs.argmax(axis=1) == labels))
    auc = macro_auc(labels, probs) if select_on == "auc" else None
    values = np.array([loss, acc, np.nan if auc is None else auc], np.float32)
    agreed = np.asarray(steps.agree(tf.constant(values)))
    logs = {"val_loss": float(agreed[0]), "val_accuracy": float(agreed[1])}
    if select_on == "auc":
        logs["val_auc"] = float(agreed[2])
    return logs


def distributed_fit(
    model,
    strategy,
    pipes,
    callbacks: list,
    *,
    epochs: int,
    n_train: int,
    global_batch: int,
    is_chief: bool,
    select_on: str = "accuracy",
    initial_epoch: int = 0,
    verbose: int = 1,
) -> None:
    """`model.fit(pipes.train, validation_data=pipes.val, epochs=..., callbacks=...)` as a custom loop
    under `strategy` (see the module docstring). Each epoch runs n_train // global_batch full global
    batches, so every worker takes the same number of steps."""
    import keras
    import tensorflow as tf

    steps_per_epoch = n_train // global_batch
    if steps_per_epoch < 1:
        raise KerasDigitsError(
            f"{n_train} training images make no full global batch of {global_batch} "
            "(--batch-size x replicas): lower --batch-size"
        )
    steps = Steps(model, strategy, global_batch, pipes.class_weight)
    train = _distribute(strategy, pipes.train)
    labels = np.asarray(pipes.val_labels).astype(np.int64)
    cbl = keras.callbacks.CallbackList(
        callbacks,
        add_history=True,
        add_progbar=verbose != 0,
        verbose=verbose,
        epochs=epochs,
        steps=steps_per_epoch,
        model=model,
    )
    model.stop_training = False
    epoch = initial_epoch
    try:
        cbl.on_train_begin()
        local_start = getattr(model, "_initial_epoch", None) or initial_epoch  # set by BackupAndRestore
        # The chief's state decides: its epoch, weights and optimizer state go to every worker (a worker whose
        # own backup is older or newer, or was deleted, follows it).
        start = int(round(chief_values(strategy, is_chief, [local_start])[0]))
        epoch = start
        broadcast_from_chief(strategy, is_chief, [*model.variables, *model.optimizer.variables])
        if start != local_start and verbose:
            print(f"this worker's backup was at epoch {local_start}; following the chief's, {start}", flush=True)
        logs: dict[str, Any] = {}
        for epoch in range(start, epochs):
            cbl.on_epoch_begin(epoch)
            iterator = iter(train)
            totals = np.zeros(3)
            for step in range(steps_per_epoch):
                cbl.on_train_batch_begin(step)
                totals += np.asarray(steps.train_step(next(iterator)), np.float64)
                logs = {"loss": totals[0] / totals[2], "accuracy": totals[1] / totals[2]}
                cbl.on_train_batch_end(step, logs)
                if model.stop_training:
                    break
            cbl.on_test_begin()  # as fit does before validating: precise BatchNorm statistics
            steps.sync_stats()  # the workers' BatchNorm statistics averaged (recomputed ones too)
            val_logs = _validate(steps, pipes.val, labels, select_on)
            cbl.on_test_end(val_logs)
            logs = {**logs, **val_logs}
            cbl.on_epoch_end(epoch, logs)
            # the chief's early stopping decides (a worker's own history may be older); divergence is seen alike
            model.stop_training = bool(chief_values(strategy, is_chief, [float(model.stop_training)])[0])
            if model.stop_training:
                break
        cbl.on_train_end(logs)
    except tf.errors.OpError as exc:
        if type(exc).__name__ not in LOST_PEER_ERRORS:
            raise
        raise LostWorker(type(exc).__name__, epoch) from None
    except LostWorker as exc:  # from an agreement inside the loop: say which epoch
        raise LostWorker(exc.cause, epoch) from None
