"""Conv2D with the bias gradient as a plain reduction, for the project's own models.

TensorFlow's oneDNN graph pass fuses a convolution's weight gradient with its bias gradient
(`_MklNativeConv2DBackpropFilterWithBias`), and in TensorFlow 2.21 that fused kernel was the slowest
op of `simple_cnn`'s step in float32: block 2's fused weight gradient took 17 ms per step at batch
128 against about 10 ms for the same weight gradient alone (AVX2 via ONEDNN_MAX_CPU_ISA; TensorFlow
profiler). Here the bias is added with `tf.nn.bias_add` (the forward pass still fuses with the
convolution) under a gradient that sums dy over batch and positions, so the weight gradient runs
unfused. `simple_cnn`'s training step at batch 32 ran 1.03-1.07x faster with AVX2 kernels and 1.10x
with AVX-512 (benchmarks/train_throughput.py --without-conv-paths: alternating fits in one run).

Taken only where that was measured: float32 compute on the TensorFlow backend, channels_last, with
oneDNN on an x86 CPU with AVX2 or better and no visible GPU (read, not assumed). bfloat16 and float16
(not measured on AMX or GPUs), TF_ENABLE_ONEDNN_OPTS=0 and other CPUs keep Keras' computation.

`Conv2D` has Keras' variables, options and saved config; results equal Keras' layer up to the
summation order (tests/test_conv.py). It keeps Keras' class name on purpose: Keras names a weights
file's entries after the layer's class (`conv2d_3/...`), so weights files and BackupAndRestore backups
of models built with Keras' Conv2D load into these models and back. It is registered as
'keras_digits>ReducedBiasConv2D' (a saved model loads after `import keras_digits.models`); the
ResNets' subclass with the small-map paths is models/smallconv.py's 'keras_digits>Conv2D'.
"""

from __future__ import annotations

import functools
import os

import keras
from keras import layers


def onednn_on_cpu_only() -> bool:
    """TensorFlow runs oneDNN's kernels here (not switched off) and no GPU is visible."""
    from keras_digits.runtime import precision

    if os.environ.get("TF_ENABLE_ONEDNN_OPTS", "").strip().lower() in ("0", "false"):
        return False  # TensorFlow's own kernels, not oneDNN's: not what was measured
    return not precision.gpu_capabilities()


@functools.cache
def _x86_onednn_cpu() -> bool:
    from keras_digits.runtime import precision

    return not precision.cpu_isa().startswith("SSE") and onednn_on_cpu_only()


def reduced_bias_grad_pays(compute_dtype: str) -> bool:
    """Whether layers computing in `compute_dtype` add their bias with the plain-reduction gradient."""
    return compute_dtype == "float32" and _x86_onednn_cpu()


def add_bias(outputs, bias):
    """`tf.nn.bias_add(outputs, bias)` (NHWC) whose bias gradient is a sum of dy over all but the last axis."""
    import tensorflow as tf

    axes = list(range(len(outputs.shape) - 1))

    @tf.custom_gradient
    def _add(y, b):
        def grad(dy):
            return dy, tf.reduce_sum(dy, axis=axes)

        return tf.nn.bias_add(y, b), grad

    # a tensor, not the variable: tf.custom_gradient would otherwise want the variables' gradients too
    return _add(outputs, tf.cast(tf.convert_to_tensor(bias), outputs.dtype))


@keras.saving.register_keras_serializable(package="keras_digits", name="ReducedBiasConv2D")
class Conv2D(layers.Conv2D):
    """keras.layers.Conv2D with the bias gradient as a plain reduction where it paid (module doc)."""

    def _reduced_bias(self) -> bool:
        return (
            self.use_bias
            and keras.backend.backend() == "tensorflow"
            and self.data_format == "channels_last"
            and reduced_bias_grad_pays(self.compute_dtype)
        )

    def call(self, inputs):
        if not self._reduced_bias():
            return super().call(inputs)
        outputs = add_bias(self.convolution_op(inputs, self.kernel), self.bias)
        return self.activation(outputs) if self.activation is not None else outputs
