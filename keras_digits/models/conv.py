"""The project's Conv2D: keras.layers.Conv2D with two CPU paths that were measured to pay.

1. **The bias gradient as a plain reduction** (float32 on a CPU). TensorFlow's oneDNN graph pass fuses
   a convolution's weight gradient with its bias gradient (`_MklNativeConv2DBackpropFilterWithBias`),
   and in TensorFlow 2.21 that fused kernel was the slowest op of `simple_cnn`'s step: block 2's weight
   gradient took 17 ms per step at batch 128 against about 10 ms for the same weight gradient alone
   (AVX2 via ONEDNN_MAX_CPU_ISA; TensorFlow profiler). Here the bias is added with `tf.nn.bias_add`
   (the forward pass still fuses with the convolution) under a gradient that sums dy over batch and
   positions, so the weight gradient runs unfused. `simple_cnn`'s whole training step ran 1.09x
   faster at batch 32 and 128 with AVX2 and 1.18x with AVX-512, in float32 (alternating timed fits in
   one process). Taken for float32 compute on the TensorFlow backend with no visible GPU (read, not
   assumed); bfloat16 and float16 (not measured on AMX or GPUs) keep Keras' computation.
2. **Small feature maps as matrix products** (bfloat16 on AMX; float32 on AVX2): models/smallconv.py.

Same variables, options and saved config as Keras' layer; results equal it up to the summation order
(tests/test_conv.py, tests/test_smallconv.py). It is registered as 'keras_digits>Conv2D': a saved
model loads after `import keras_digits.models`. It keeps Keras' class name on purpose: Keras names a
weights file's entries after the layer's class (`conv2d_3/...`), so with this name the weights files
and BackupAndRestore backups of models built with Keras' Conv2D load into these models and back
(tested); a new class name broke resuming runs backed up before.
"""

from __future__ import annotations

import functools

import keras
from keras import layers

from keras_digits.models import smallconv


@functools.cache
def _cpu_only() -> bool:
    from keras_digits.runtime import precision

    return not precision.gpu_capabilities()


def reduced_bias_grad_pays(compute_dtype: str) -> bool:
    """Whether layers computing in `compute_dtype` add their bias with the plain-reduction gradient."""
    return compute_dtype == "float32" and _cpu_only()


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


@keras.saving.register_keras_serializable(package="keras_digits")
class Conv2D(layers.Conv2D):
    """keras.layers.Conv2D with the CPU paths in the module doc."""

    def _fast(self, inputs) -> bool:
        """Whether this convolution's output maps are small enough for the matrix-product paths here."""
        if keras.backend.backend() != "tensorflow" or self.data_format != "channels_last" or self.groups != 1:
            return False
        if tuple(self.dilation_rate) != (1, 1) or tuple(self.strides) != (1, 1) or len(inputs.shape) != 4:
            return False  # strided convolutions lost or broke even (benchmarks/conv_paths.py)
        area = smallconv.matmul_max_area(self.compute_dtype)
        if not area:
            return False
        in_h, in_w, channels = inputs.shape[1:]
        if in_h is None or in_w is None or channels is None:
            return False
        kh, kw = self.kernel_size
        out_h, out_w, _ = smallconv._geometry(int(in_h), int(in_w), kh, kw, *self.strides, self.padding)
        return 0 < out_h * out_w <= area

    def _reduced_bias(self) -> bool:
        return (
            self.use_bias
            and keras.backend.backend() == "tensorflow"
            and self.data_format == "channels_last"
            and reduced_bias_grad_pays(self.compute_dtype)
        )

    def convolution_op(self, inputs, kernel):
        if not self._fast(inputs):
            return super().convolution_op(inputs, kernel)
        return smallconv.small_map_conv(inputs, kernel, tuple(self.strides), self.padding)

    def call(self, inputs):
        if not self._reduced_bias():
            return super().call(inputs)
        outputs = add_bias(self.convolution_op(inputs, self.kernel), self.bias)
        return self.activation(outputs) if self.activation is not None else outputs
