"""Modified backpropagation: a copy of the model (sharing its weights) whose elementwise activations pass
gradients back by a rule instead of their derivative. Guided Backpropagation and DeepLIFT's rescale rule
are built on it (methods in explain.gradients).

Which layers: every leaf layer whose activation is elementwise (relu, relu6, leaky_relu, elu, selu, gelu,
sigmoid, tanh, swish/silu, softplus, ...), either as the `activation` of a Dense/Conv-like layer (the layer
is called with a linear activation and the rule applied to its output) or as an activation layer
(Activation, ReLU, LeakyReLU, ELU). The softmax head is never touched (the explainer reads logits).

Rules (y = f(z) elementwise, g the gradient arriving from above):

* ``guided`` (Springenberg et al. 2015): g' = ReLU(g) * f'(z): only positive gradients pass, and only
  where the unit was active;
* ``rescale`` (DeepLIFT, Shrikumar et al. 2017): the batch holds each image and then its reference image;
  g' = g * (f(z) - f(z0)) / (z - z0) for the image's half, with z0 the same unit on the reference, and
  f'(z) where z and z0 (nearly) coincide. Linear layers keep their gradient, so for a network of linear
  layers and elementwise activations the attributions (x - x0) * g' add up exactly to the score's change
  from the reference ("summation to delta"). Max pooling keeps its gradient (DeepExplain's choice), which
  makes that sum approximate; `linear_check` names such layers so the result can say so.
"""

from __future__ import annotations

ELEMENTWISE = {
    "relu",
    "relu6",
    "leaky_relu",
    "elu",
    "selu",
    "gelu",
    "sigmoid",
    "tanh",
    "swish",
    "silu",
    "softplus",
    "softsign",
    "hard_sigmoid",
    "hard_silu",
    "hard_swish",
    "mish",
    "exponential",
    "celu",
    "glu",
}
ELEMENTWISE.discard("glu")  # splits its input in two: not elementwise
# layer types DeepLIFT's rescale rule treats exactly (linear in inference, or wrapped activations)
LINEAR_TYPES = {
    "InputLayer",
    "Conv1D",
    "Conv2D",
    "Conv3D",
    "SeparableConv2D",
    "DepthwiseConv2D",
    "Conv2DTranspose",
    "Dense",
    "EinsumDense",
    "BatchNormalization",
    "LayerNormalization",  # not linear in x; listed below as approximate
    "Add",
    "Subtract",
    "Average",
    "Concatenate",
    "Flatten",
    "Reshape",
    "Permute",
    "Dropout",
    "SpatialDropout2D",
    "GaussianNoise",
    "GaussianDropout",
    "Rescaling",
    "Normalization",
    "Resizing",
    "ZeroPadding2D",
    "Cropping2D",
    "UpSampling2D",
    "GlobalAveragePooling2D",
    "AveragePooling2D",
    "Identity",
    "CaffePreprocess",  # keras_digits.models.pretrained: channel order and mean, affine
}
LINEAR_TYPES.discard("LayerNormalization")


def _keras():
    import keras

    return keras


def activation_name(fn) -> str:
    return getattr(fn, "__name__", "") if fn is not None else ""


def _last_step_types():
    """Layer types whose `activation` is their last step (so it can be swapped for a linear one and applied
    after): Dense and the convolutions. Recurrent layers use theirs inside and are left alone."""
    keras = _keras()
    return (
        keras.layers.Dense,
        keras.layers.EinsumDense,
        keras.layers.Conv1D,
        keras.layers.Conv2D,
        keras.layers.Conv3D,
        keras.layers.SeparableConv1D,
        keras.layers.SeparableConv2D,
        keras.layers.DepthwiseConv1D,
        keras.layers.DepthwiseConv2D,
        keras.layers.Conv1DTranspose,
        keras.layers.Conv2DTranspose,
        keras.layers.Conv3DTranspose,
    )


def activation_of(layer):
    """(elementwise function, swap) for a layer the rules apply to, else None. `swap`: the activation is the
    layer's `activation` attribute (call the layer with a linear one, then apply it); otherwise the layer
    itself is the activation."""
    keras = _keras()
    if isinstance(layer, (keras.layers.ReLU, keras.layers.LeakyReLU, keras.layers.ELU)):
        return layer.call, False
    fn = getattr(layer, "activation", None)
    name = activation_name(fn)
    if name not in ELEMENTWISE:
        return None
    if type(layer) is keras.layers.Activation:
        return fn, False
    if isinstance(layer, _last_step_types()):
        return fn, True
    return None


def activation_layers(model) -> list[str]:
    """Paths of the layers the rules change (none for an opaque SavedModel)."""
    from keras_digits.explain.graph import flat_layers

    return [path for path, layer, _ in flat_layers(model) if activation_of(layer) is not None]


def _derivative(fn, z):
    import tensorflow as tf

    with tf.GradientTape() as tape:
        tape.watch(z)
        y = fn(z)
    return y, tape.gradient(y, z)  # elementwise f: the gradient of sum(y) is f'(z)


def guided(pre, fn):
    import tensorflow as tf

    @tf.custom_gradient
    def op(z):
        y, d = _derivative(fn, z)

        def grad(g):
            return tf.nn.relu(g) * tf.cast(d, g.dtype)

        return y, grad

    return op(pre)


def rescale(pre, fn):
    import tensorflow as tf

    @tf.custom_gradient
    def op(z):
        y, d = _derivative(fn, z)
        n = tf.shape(z)[0] // 2
        z32, y32, d32 = (tf.cast(v, tf.float32) for v in (z, y, d))
        dz = z32[:n] - z32[n:]
        far = tf.abs(dz) > 1e-4 * (1.0 + tf.abs(z32[:n]))
        slope = tf.where(far, (y32[:n] - y32[n:]) / tf.where(far, dz, 1.0), d32[:n])

        def grad(g):
            return tf.concat([g[:n] * tf.cast(slope, g.dtype), g[n:] * tf.cast(d[n:], g.dtype)], axis=0)

        return y, grad

    return op(pre)


RULES = {"guided": guided, "rescale": rescale}


def _rule_layer_class():
    keras = _keras()

    class RuleLayer(keras.layers.Layer):
        """`inner` (a built layer) with its elementwise activation passed through `rule`; not saved."""

        def __init__(self, inner, fn, swap: bool, rule, **kwargs):
            super().__init__(name=f"{inner.name}_rule", dtype=inner.dtype_policy, **kwargs)
            self.inner, self.fn, self.swap, self.rule = inner, fn, swap, rule

        def call(self, *args, **kwargs):
            if not self.swap:
                return self.rule(args[0], self.fn)
            saved = self.inner.activation
            self.inner.activation = _keras().activations.linear
            try:
                pre = self.inner(*args, **kwargs)
            finally:
                self.inner.activation = saved
            return self.rule(pre, self.fn)

    return RuleLayer


def rewire_with_rule(model, rule: str, raw_output: bool = False):
    """The explainer's input model (see graph.rewire) with every elementwise activation under `rule`."""
    from keras_digits.errors import KerasDigitsError
    from keras_digits.explain.graph import rewire

    cls = _rule_layer_class()
    fn = RULES[rule]
    wrapped = []

    def transform(layer):
        found = activation_of(layer)
        if found:
            wrapped.append(layer.name)
        return cls(layer, found[0], found[1], fn) if found else None

    net = rewire(model, None, transform, raw_output=raw_output)[0]
    if not wrapped:
        raise KerasDigitsError(
            f"{'Guided Backpropagation' if rule == 'guided' else 'DeepLIFT'} changes how activations pass gradients "
            f"back, and {model.name} shows none (a SavedModel is one opaque layer; load the .keras file instead)"
        )
    return net


def linear_check(model) -> list[str]:
    """Paths of the layers (outside the head) that DeepLIFT's rescale rule passes with their plain gradient
    although they are not linear: max pooling, multiplications, unknown layer types."""
    from keras_digits.explain.graph import flat_layers

    out = []
    layers = flat_layers(model)
    for path, layer, _ in layers[:-1]:
        kind = type(layer).__name__
        bn = isinstance(layer, _keras().layers.BatchNormalization)  # the project's fused one too
        if kind in LINEAR_TYPES or bn or activation_of(layer) is not None:
            continue
        out.append(f"{path} ({kind})")
    return out
