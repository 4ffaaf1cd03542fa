"""BatchNormalization on TensorFlow's fused kernel, for the project's own models.

Keras 3 computes BatchNormalization from separate ops (moments: mean, squared difference, mean;
then subtract, multiply, add; under a mixed policy with casts around them), each a pass over the
activations, forward and backward. On a 2-core CPU that was a third of `simple_cnn`'s training step
(TensorFlow profiler, benchmarks/train_throughput.py --profile): more than its convolutions' backward
pass. TensorFlow's FusedBatchNormV3 (oneDNN's batch normalisation on x86) does the statistics, the
normalisation and its gradient in one kernel each, in float32 statistics for bfloat16 and float16
activations, as PyTorch's does.

`FusedBatchNormalization` is `keras.layers.BatchNormalization` with the same variables, options,
moving-average update (the biased batch variance, as Keras uses) and saved config; it takes the
fused kernel for float inputs of rank 2 or 4 normalised over the last axis, on the TensorFlow
backend, without mask, renorm or synchronisation, and falls back to Keras' own computation
otherwise (another backend, another axis). It is registered as 'keras_digits>FusedBatchNormalization':
a saved model loads after `import keras_digits.models` (the project's loaders use compile=False; with
compile=True a run trained with --schedule onecycle or --label-smoothing also needs
`import keras_digits.training.optim`, where its schedule and loss are registered).
"""

from __future__ import annotations

import keras
from keras import layers

from keras_digits.models.common import BN_MOMENTUM


@keras.saving.register_keras_serializable(package="keras_digits")
class FusedBatchNormalization(layers.BatchNormalization):
    """keras.layers.BatchNormalization computed with TensorFlow's fused kernel where it applies."""

    def _fusable(self, inputs, mask) -> bool:
        if keras.backend.backend() != "tensorflow" or mask is not None or self.renorm or self.synchronized:
            return False
        rank = len(inputs.shape)
        axis = self.axis if self.axis >= 0 else self.axis + rank
        return rank in (2, 4) and axis == rank - 1 and inputs.shape[-1] is not None

    def call(self, inputs, training=None, mask=None):
        if not self._fusable(inputs, mask):
            return super().call(inputs, training=training, mask=mask)
        import tensorflow as tf

        x = inputs
        if x.dtype not in (tf.float32, tf.bfloat16, tf.float16):
            x = tf.cast(x, tf.float32)
        flat = len(x.shape) == 2
        if flat:
            x = x[:, None, None, :]
        channels = int(x.shape[-1])
        scale = tf.cast(self.gamma, tf.float32) if self.scale else tf.ones([channels], tf.float32)
        offset = tf.cast(self.beta, tf.float32) if self.center else tf.zeros([channels], tf.float32)
        if training and self.trainable:
            y, mean, variance = tf.compat.v1.nn.fused_batch_norm(
                x, scale, offset, epsilon=self.epsilon, data_format="NHWC", is_training=True
            )
            count = tf.cast(tf.size(x) // channels, tf.float32)
            biased = variance * tf.maximum(count - 1.0, 0.0) / count  # the kernel returns the unbiased variance
            m = self.momentum
            self.moving_mean.assign(self.moving_mean * m + tf.cast(mean, self.moving_mean.dtype) * (1.0 - m))
            self.moving_variance.assign(
                self.moving_variance * m + tf.cast(biased, self.moving_variance.dtype) * (1.0 - m)
            )
        else:
            y, _, _ = tf.compat.v1.nn.fused_batch_norm(
                x,
                scale,
                offset,
                mean=tf.cast(self.moving_mean, tf.float32),
                variance=tf.cast(self.moving_variance, tf.float32),
                epsilon=self.epsilon,
                data_format="NHWC",
                is_training=False,
            )
        if flat:
            y = y[:, 0, 0, :]
        return tf.cast(y, self.compute_dtype)


def fused_bn(name: str, momentum: float = BN_MOMENTUM) -> FusedBatchNormalization:
    """The BatchNormalization layer of the project's own models."""
    return FusedBatchNormalization(momentum=momentum, name=name)
