"""Conv2D whose small feature maps are computed as matrix products, for the project's ResNets.

On a CPU, TensorFlow's convolutions (oneDNN) are fast on large feature maps and slow on small ones:
ResNet-18 at 28 px ends in a 4x4x512 stage, and there one 3x3 512->512 convolution at batch 64 in
bfloat16 took 25 ms forward, 21 ms for the input gradient and 66 ms for the weight gradient on the
development machine (2 cores, AMX-BF16), against 12-15 ms each as im2col matrix products
(benchmarks/conv_paths.py prints the table for the machine it runs on). At 7x7 the weight gradient
still gains (27 ms against 15 ms); the forward pass and the input gradient do not. Those two
stages were most of ResNet-18's distance to PyTorch in bfloat16 (docs/speed.md).

That gain is oneDNN's AMX bfloat16 kernels' (and so is the gap). In float32 with AVX-512 the matrix
products were even at 4x4 (1.03x forward + both gradients) and slower at 7x7 (0.88x); in bfloat16
with AMX switched off (ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16) they were slower for the forward pass and
the input gradient. In float32 where oneDNN has only AVX2 (an AVX2 CPU, or ONEDNN_MAX_CPU_ISA=AVX2)
the 4x4 convolution ran 1.39x faster as products (116 against 84 ms at batch 64), the 7x7 weight
gradient 0.97x; on a GPU nothing was measured. So each path is taken only where it was measured to
pay (`matmul_max_area`, from /proc/cpuinfo and oneDNN's ISA cap, not assumed; no visible GPU):
maps up to 7x7 in bfloat16 on a CPU with AMX-BF16, maps up to 4x4 in float32 on AVX2 kernels.

`Conv2D` here is models/conv.py's Conv2D (Keras' layer with the same variables, options and saved
config; its bias gradient as a plain reduction in float32) that, there and on the TensorFlow backend, computes
a 2D convolution of output maps of at most MATMUL_MAX_AREA positions (4x4) as one matrix product of
the input's patches with the kernel, and takes the weight gradient as a matrix product up to
WGRAD_MAX_AREA positions (7x7), for stride-1 convolutions. Strided ones
keep TensorFlow's kernels: with the weight gradient as a product, ResNet-18's 14x14 -> 7x7 stride-2
3x3 convolution ran at 0.58x and the 7x7 -> 4x4 one broke even. Anything else (another backend,
groups, dilation, channels_first, larger maps) is Keras' own computation. Results equal Keras'
Conv2D up to the summation order (tested for values and both gradients). It is registered as
'keras_digits>Conv2D': a saved model loads after `import keras_digits.models`. It keeps Keras' class
name on purpose: Keras names a weights file's entries after the layer's class (`conv2d_3/...`), so
with this name the weights files and BackupAndRestore backups of models built with Keras' Conv2D
load into these models and back (tested); a new class name broke resuming runs backed up before.
"""

from __future__ import annotations

import functools

import keras

from keras_digits.models import conv

MATMUL_MAX_AREA = 16  # output maps up to 4x4: forward and gradients as matrix products
WGRAD_MAX_AREA = 49  # up to 7x7: the weight gradient as a matrix product


@functools.cache
def _amx_cpu_only() -> bool:
    from keras_digits.runtime import precision

    return precision.cpu_isa().startswith("AMX") and conv.onednn_on_cpu_only()  # AMX not switched off


@functools.cache
def _avx2_kernels_only() -> bool:
    """oneDNN runs AVX2 kernels here: a CPU without AVX-512, or ONEDNN_MAX_CPU_ISA capping it at AVX2."""
    from keras_digits.runtime import precision

    return precision.cpu_isa().startswith("AVX2") and conv.onednn_on_cpu_only()


def matmul_max_area(compute_dtype: str) -> int:
    """The largest output map (positions) this machine computes with the matrix-product paths for
    layers computing in `compute_dtype`; 0: none."""
    if compute_dtype == "bfloat16" and _amx_cpu_only():
        return WGRAD_MAX_AREA
    if compute_dtype == "float32" and _avx2_kernels_only():
        return MATMUL_MAX_AREA
    return 0


def _same_pads(size: int, k: int, s: int) -> tuple[int, int, int]:
    """TensorFlow's SAME padding: (output size, pad before, pad after)."""
    out = -(-size // s)
    total = max((out - 1) * s + k - size, 0)
    return out, total // 2, total - total // 2


def _geometry(in_h, in_w, kh, kw, sh, sw, padding):
    if padding == "same":
        out_h, pt, pb = _same_pads(in_h, kh, sh)
        out_w, pl, pr = _same_pads(in_w, kw, sw)
    else:
        out_h, out_w = (in_h - kh) // sh + 1, (in_w - kw) // sw + 1
        pt = pb = pl = pr = 0
    return out_h, out_w, (pt, pb, pl, pr)


def _patches(tf, x, channels, kh, kw, sh, sw, out_h, out_w, pads):
    """(N*out_h*out_w, kh*kw*channels) rows of x's patches, in the kernel's (kh, kw, C) order."""
    pt, pb, pl, pr = pads
    if any(pads):
        x = tf.pad(x, [[0, 0], [pt, pb], [pl, pr], [0, 0]])
    cols = [
        x[:, i : i + sh * (out_h - 1) + 1 : sh, j : j + sw * (out_w - 1) + 1 : sw, :]
        for i in range(kh)
        for j in range(kw)
    ]
    return tf.reshape(tf.concat(cols, axis=-1), [-1, kh * kw * channels])


def small_map_conv(x, kernel, strides, padding):
    """conv2d(x, kernel) (NHWC, static H, W and C) with the matrix-product paths described above."""
    import tensorflow as tf

    _, in_h, in_w, channels = (int(d) if d is not None else None for d in x.shape)
    kh, kw, _, filters = (int(d) for d in kernel.shape)
    sh, sw = strides
    out_h, out_w, pads = _geometry(in_h, in_w, kh, kw, sh, sw, padding)
    whole = out_h * out_w <= MATMUL_MAX_AREA and sh == sw == 1  # forward and input gradient as products too
    pad_mode = padding.upper()

    @tf.custom_gradient
    def conv(x, kernel):
        if whole:
            flat = _patches(tf, x, channels, kh, kw, sh, sw, out_h, out_w, pads) @ tf.reshape(kernel, [-1, filters])
            y = tf.reshape(flat, [-1, out_h, out_w, filters])
        else:
            y = tf.nn.conv2d(x, kernel, [1, sh, sw, 1], pad_mode)

        def grad(dy):
            dy_flat = tf.reshape(dy, [-1, filters])
            dk = tf.reshape(
                tf.matmul(_patches(tf, x, channels, kh, kw, sh, sw, out_h, out_w, pads), dy_flat, transpose_a=True),
                [kh, kw, channels, filters],
            )
            if whole:  # the input gradient: dy, padded by k-1-pad, convolved with the flipped kernel
                pt, pb, pl, pr = pads
                dy_pads = (kh - 1 - pt, kh - 1 - pb, kw - 1 - pl, kw - 1 - pr)
                flipped = tf.reshape(tf.transpose(tf.reverse(kernel, [0, 1]), [0, 1, 3, 2]), [-1, channels])
                rows = _patches(tf, dy, filters, kh, kw, 1, 1, in_h, in_w, dy_pads)
                dx = tf.reshape(rows @ flipped, [-1, in_h, in_w, channels])
            else:
                dx = tf.compat.v1.nn.conv2d_backprop_input(tf.shape(x), kernel, dy, [1, sh, sw, 1], pad_mode)
            return dx, dk

        return y, grad

    # a tensor, not the variable: tf.custom_gradient would otherwise want the variables' gradients too
    return conv(x, tf.convert_to_tensor(kernel))


@keras.saving.register_keras_serializable(package="keras_digits")
class Conv2D(conv.Conv2D):
    """models/conv.py's Conv2D with small output maps computed as matrix products (see the module doc)."""

    def _fast(self, inputs) -> bool:
        if keras.backend.backend() != "tensorflow" or self.data_format != "channels_last" or self.groups != 1:
            return False
        if tuple(self.dilation_rate) != (1, 1) or tuple(self.strides) != (1, 1) or len(inputs.shape) != 4:
            return False  # strided convolutions were not measured to pay enough to take (benchmarks/conv_paths.py)
        area = matmul_max_area(self.compute_dtype)
        if not area:
            return False
        in_h, in_w, channels = inputs.shape[1:]
        if in_h is None or in_w is None or channels is None:
            return False
        kh, kw = self.kernel_size
        out_h, out_w, _ = _geometry(int(in_h), int(in_w), kh, kw, *self.strides, self.padding)
        return 0 < out_h * out_w <= area

    def convolution_op(self, inputs, kernel):
        if not self._fast(inputs):
            return super().convolution_op(inputs, kernel)
        return small_map_conv(inputs, kernel, tuple(self.strides), self.padding)
