"""A model's graph as the explainers need it: the candidate target layers for the CAM methods, the one
chosen automatically, and a rewired model that returns (feature map, pre-softmax input) in one call.

Nested models (the keras.applications base named "base" inside our pretrained models, or any
Functional/Sequential used as a layer) are walked through: a layer inside one is named by its path,
``base/conv4_block6_out``. Rewiring calls the original layers again on new symbolic inputs, so the
rewired model shares every weight with the trained one (randomizing one randomizes the other).

How the target layer is chosen (`auto_layer`), for any topology:

1. Only *cut points* qualify: layers whose output every path from the input to the prediction goes
   through. After a residual ``Add`` qualifies; a conv inside the block does not (the skip connection
   bypasses it), so the map explains everything the later layers see.
2. The output must be a spatial map (batch, h, w, channels), produced after the first layer that has
   weights (the resize/rescale prefix is the image itself, not a feature), and not by a padding or
   cropping layer (its map is the previous one with cells added or cut at one edge, so it no longer
   lines up with the image: keras.applications pads before every stride-2 depthwise conv).
3. Of those, the deepest whose smaller side is at least `MIN_SIDE` (4) cells: a 2x2 or 3x3 map only
   says which quadrant. When every map is coarser, the deepest of the largest maps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from keras_digits.errors import KerasDigitsError

MIN_SIDE = 4
SEP = "/"


@dataclass(frozen=True)
class LayerInfo:
    path: str  # "name" or "base/name" for a layer inside a nested model
    shape: tuple  # output shape without the batch dimension
    cut: bool  # every input-to-output path goes through it
    after_weights: bool  # some layer with weights comes before (or is) it
    reframed: bool  # a padding or cropping layer: its cells are shifted against the image

    @property
    def spatial(self) -> bool:
        return len(self.shape) == 3 and all(isinstance(d, int) for d in self.shape[:2])

    @property
    def side(self) -> int:
        return min(self.shape[:2]) if self.spatial else 0


def _keras():
    import keras

    return keras


def is_submodel(layer) -> bool:
    keras = _keras()
    return isinstance(layer, keras.Model)


def _reframing() -> tuple:
    keras = _keras()
    return tuple(getattr(keras.layers, f"{kind}{d}D") for kind in ("ZeroPadding", "Cropping") for d in (1, 2, 3))


def _is_input(layer) -> bool:
    return type(layer).__name__ == "InputLayer"


def _flat(x) -> list:
    return list(_keras().tree.flatten(x))


def _producer(tensor):
    return tensor._keras_history.operation


def _steps(model) -> list[tuple[Any, list]]:
    """(layer, its input tensors) for each call in `model`'s own graph, in execution order, inputs left out.

    Keras 3 keeps a functional graph's calls as nodes grouped by depth (`_nodes_by_depth`, what
    `Functional.call` itself walks); a Sequential is a chain of its layers."""
    keras = _keras()
    if isinstance(model, keras.Sequential):
        return [(layer, []) for layer in model.layers if not _is_input(layer)]
    steps = []
    for depth in sorted(model._nodes_by_depth, reverse=True):
        for node in model._nodes_by_depth[depth]:
            if node.operation is not None and not node.is_input:
                steps.append((node.operation, list(node.input_tensors)))
    return steps


def sequence(model) -> list:
    """The model's layers in execution order, input layers left out."""
    return [layer for layer, _ in _steps(model)]


def _cuts(model) -> list[bool]:
    """For each layer of `sequence(model)`: whether it is a cut point of the model's own graph.

    The steps are in topological order, so a layer is a cut exactly when no edge jumps over it (an
    edge from an earlier layer, or the input, to a later one)."""
    steps = _steps(model)
    if isinstance(model, _keras().Sequential):
        return [True] * len(steps)
    pos = {id(layer): i for i, (layer, _) in enumerate(steps)}
    jumped = [False] * len(steps)
    for j, (_, inputs) in enumerate(steps):
        for t in inputs:
            i = pos.get(id(_producer(t)), -1)  # -1: the model's input
            for k in range(i + 1, j):
                jumped[k] = True
    return [not j for j in jumped]


def flat_layers(model) -> list[tuple[str, Any, bool]]:
    """(path, layer, cut) of every layer of `model` that is not itself a model, nested models walked
    through, in execution order; `cut`: every input-to-output path of the whole model goes through it."""
    out: list[tuple[str, Any, bool]] = []

    def walk(m, prefix: str, outer_cut: bool) -> None:
        for layer, cut in zip(sequence(m), _cuts(m)):
            path = prefix + layer.name
            if is_submodel(layer):
                walk(layer, path + SEP, outer_cut and cut)
            else:
                out.append((path, layer, outer_cut and cut))

    walk(model, "", True)
    return out


def layer_infos(model) -> list[LayerInfo]:
    """Every layer of `model` (`flat_layers`) with what `auto_layer` needs to know about it."""
    out: list[LayerInfo] = []
    seen_weights = False
    reframing = _reframing()
    for path, layer, cut in flat_layers(model):
        seen_weights = seen_weights or bool(layer.weights)
        shape = tuple(layer.output.shape[1:]) if not isinstance(layer.output, (list, tuple)) else ()
        out.append(LayerInfo(path, shape, cut, seen_weights, isinstance(layer, reframing)))
    return out


def candidates(model) -> list[LayerInfo]:
    """Layers a CAM method can use: spatial cut points after the first weighted layer."""
    return [info for info in layer_infos(model) if info.cut and info.spatial and info.after_weights]


def auto_layer(model) -> LayerInfo | None:
    """The target layer chosen for `model` (see the module docstring); None when it has no spatial map."""
    usable = candidates(model)
    found = [c for c in usable if not c.reframed] or usable
    if not found:
        return None
    fine = [c for c in found if c.side >= MIN_SIDE]
    if fine:
        return fine[-1]
    largest = max(c.side for c in found)
    return [c for c in found if c.side == largest][-1]


def resolve_layer(model, name: str | None) -> LayerInfo | None:
    """The layer named by --layer (a path or a unique plain name), checked; `None` picks automatically."""
    if name is None:
        return auto_layer(model)
    infos = layer_infos(model)
    hits = [i for i in infos if i.path == name] or [i for i in infos if i.path.split(SEP)[-1] == name]
    usable = candidates(model)
    listed = ", ".join(c.path for c in usable[-12:]) or "none (the model has no spatial feature map)"
    if not hits:
        raise KerasDigitsError(f"--layer {name!r} is not a layer of this model; candidates (deepest last): {listed}")
    if len(hits) > 1:
        raise KerasDigitsError(f"--layer {name!r} is ambiguous: {', '.join(h.path for h in hits)}; give the full path")
    info = hits[0]
    if info.spatial and not info.after_weights:
        raise KerasDigitsError(
            f"--layer {info.path} comes before any layer with weights (it is the image itself, "
            f"not a feature map); candidates (deepest last): {listed}"
        )
    if not info.spatial:
        raise KerasDigitsError(
            f"--layer {info.path} outputs shape {info.shape}, not a spatial map (h, w, channels); "
            f"candidates (deepest last): {listed}"
        )
    return info


def _is_linear_activation(layer) -> bool:
    keras = _keras()
    return isinstance(layer, keras.layers.Activation) and getattr(layer.activation, "__name__", "") == "linear"


def _find_output_head(model) -> tuple[Any, str]:
    """The layer logits come out of, and how: 'dense' (a Dense with softmax: its kernel and bias applied to
    its input), 'activation' (a softmax Activation/Softmax layer: its input is the logits), else 'log'
    (log of the probabilities: the same differences between classes as logits). Trailing linear
    activations are looked through (mixed precision appends a float32 'linear' Activation after the
    softmax: keras_digits.runtime.strategy.float32_outputs)."""
    keras = _keras()
    steps = _steps(model)
    layer, inputs = steps[-1]
    while True:
        if is_submodel(layer):
            steps = _steps(layer)
            layer, inputs = steps[-1]
            continue
        if _is_linear_activation(layer) and len(inputs) == 1:
            producer = _producer(inputs[0])
            found = [(op, ins) for op, ins in steps if op is producer]
            if found:
                layer, inputs = found[0]
                continue
        break
    activation = getattr(getattr(layer, "activation", None), "__name__", "")
    if isinstance(layer, keras.layers.Dense) and activation == "softmax":
        return layer, "dense"
    if isinstance(layer, keras.layers.Dense) and activation == "linear":
        return layer, "logits"  # a logit head: its output is the logits
    softmax_activation = isinstance(layer, keras.layers.Activation) and activation == "softmax"
    if isinstance(layer, keras.layers.Softmax) or softmax_activation:
        return layer, "activation"
    return layer, "log"


def rewire(model, layer_path: str | None, transform=None, raw_output: bool = False):
    """(keras.Model x -> [feature map, head input] (or [head input] without `layer_path`), head layer, head kind)
    sharing `model`'s weights. The head input is what `Explainer._head` turns into logits: the softmax Dense's
    input ("dense"), the softmax's input ("activation"), else (or with `raw_output`) the model's output.
    `transform(layer)` may return a layer to call in place of a leaf layer (explain.modified's rules)."""
    keras = _keras()
    head, kind = _find_output_head(model)
    found: dict[str, Any] = {}

    def run(m, args: list, prefix: str) -> list:
        if isinstance(m, keras.Sequential):
            x = args[0]
            for layer in sequence(m):
                x = call(layer, prefix, x)
            return [x]
        return _flat(m._run_through_graph(args, call_fn=lambda op, *a, **kw: call(op, prefix, *a, **kw)))

    def call(layer, prefix: str, *args, **kwargs):
        path = prefix + layer.name
        if layer is head:
            found["head_input"] = args[0]
        if is_submodel(layer):
            outs = run(layer, _flat(args), path + SEP)
            out = outs[0] if len(outs) == 1 else outs
        else:
            swap = transform(layer) if transform is not None and layer is not head else None
            out = (swap or layer)(*args, **kwargs)
        if path == layer_path:
            found["feature"] = out
        return out

    image = keras.Input(shape=model.inputs[0].shape[1:], dtype=model.inputs[0].dtype, name="explain_image")
    outputs = run(model, [image], "")
    head_input = found.get("head_input", outputs[0]) if kind not in ("log", "logits") and not raw_output else outputs[0]
    if layer_path is not None and "feature" not in found:
        raise KerasDigitsError(f"layer {layer_path} was not reached while rewiring the model")
    outs = [found["feature"], head_input] if layer_path is not None else [head_input]
    return keras.Model(image, outs, name=f"{model.name}_explain"), head, kind
