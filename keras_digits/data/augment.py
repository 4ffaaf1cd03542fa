"""Training-time augmentation: Keras preprocessing layers applied in tf.data.map, never in the model.

`--augment` takes ``none``, a preset (``light``, ``strong``) or a SPEC:

    SPEC   := OP[,OP...]
    OP     := NAME | NAME=PROB | NAME=PROB:PARAM | NAME=:PARAM
    PROB   := probability in [0, 1] that one image gets this op (default 0.1, the reports' setting)

    NAME        PARAM (default)                        Keras layer
    rotate      max angle in degrees, <= 180 (10)      RandomRotation
    rot90       none: turn by 90, 180 or 270 degrees    (transpose/reverse; square images)
    translate   max shift, fraction of the size (0.1)  RandomTranslation
    zoom        max zoom in/out, fraction (0.1)        RandomZoom
    shear       max shear, fraction (0.1)              RandomShear
    flip        horizontal | vertical | horizontal_and_vertical (horizontal)   (tf.reverse; the
                last: a random one of left-right, upside-down or both)
    contrast    max contrast change, fraction (0.2)    RandomContrast
    brightness  max brightness shift, fraction of 255 (0.2)                     RandomBrightness
    hue         max hue shift, fraction of the wheel (0.1); RGB only            RandomHue
    saturation  max saturation change, fraction (0.2); RGB only                 RandomSaturation

e.g. ``rotate=0.1:15,translate=0.1:0.1,zoom=0.1:0.1,flip=0.5:horizontal,contrast=0.1:0.2``.
Ops run in the order given. Each op decides per image: the op transforms the whole batch, then a
per-image Bernoulli(PROB) mask (``tf.where``) keeps the transformed or the original image, so one
image may get several ops or none. A bad SPEC raises KerasDigitsError with one line.

Presets are dataset-safe. Digit datasets (mnist, digits, svhn, folder and anything unknown) never
flip (a mirrored 2 or 5 is not a digit) and rotate at most 15 degrees (a 6 must not become a 9);
histology (pathmnist) has no orientation, so it flips both ways and turns by 90 degrees and gets
colour jitter (stain variation); cifar10 flips horizontally only. ``light`` gives every op the
probability 0.1 (the reports' setting), ``strong`` 0.3-0.5 and larger magnitudes: see `PRESETS`.

Randomness is stateless and seeded: each batch is zipped with an element of
``tf.data.Dataset.random(seed, rerandomize_each_iteration=True)`` and every op draws from a seed
derived from it, so the augmented stream is identical between runs with one seed (also with
parallel map calls) and different in every epoch. Images come in and go out as uint8 (the ops
work on float 0..255, the result is rounded and clipped), exactly like the validation batches;
the model takes raw 0..255 pixels either way. Validation and test data are never augmented:
`keras_digits.data.datasets.make_datasets` maps this function over training batches only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from keras_digits.errors import KerasDigitsError

AUGMENTS = ("none", "light", "strong")
DEFAULT_PROB = 0.1
FLIP_MODES = ("horizontal", "vertical", "horizontal_and_vertical")
RGB_ONLY = ("hue", "saturation")
DIGIT_DATASETS = ("mnist", "digits", "svhn", "folder")
HISTOLOGY_DATASETS = ("pathmnist",)
BLACK_BACKGROUND = ("mnist", "digits")  # geometric ops fill with 0 here, elsewhere they reflect

# name -> (default param, kind): kind "deg" = degrees in (0, 180], "frac" = fraction in (0, 1],
# "mode" = flip mode, None = takes no parameter
OPS: dict[str, tuple[Any, str | None]] = {
    "rotate": (10.0, "deg"),
    "rot90": (None, None),
    "translate": (0.1, "frac"),
    "zoom": (0.1, "frac"),
    "shear": (0.1, "frac"),
    "flip": ("horizontal", "mode"),
    "contrast": (0.2, "frac"),
    "brightness": (0.2, "frac"),
    "hue": (0.1, "frac"),
    "saturation": (0.2, "frac"),
}

PRESETS: dict[str, dict[str, str]] = {
    "digits": {
        "light": "rotate=0.1:10,translate=0.1:0.1,zoom=0.1:0.1",
        "strong": "rotate=0.5:15,translate=0.5:0.15,zoom=0.5:0.15,shear=0.3:0.1,contrast=0.3:0.3,brightness=0.3:0.2",
    },
    "histology": {
        "light": "flip=0.1:horizontal_and_vertical,rot90=0.1,brightness=0.1:0.1,contrast=0.1:0.1",
        "strong": "flip=0.5:horizontal_and_vertical,rot90=0.5,zoom=0.3:0.1,brightness=0.5:0.2,"
        "contrast=0.5:0.2,hue=0.5:0.05,saturation=0.5:0.2",
    },
    "natural": {
        "light": "flip=0.1:horizontal,translate=0.1:0.1,zoom=0.1:0.1",
        "strong": "flip=0.5:horizontal,translate=0.5:0.125,zoom=0.3:0.1,rotate=0.3:10,contrast=0.3:0.2,"
        "brightness=0.3:0.2,saturation=0.3:0.2",
    },
}

SPEC_HELP = (
    "training augmentation: none | light | strong (dataset-safe presets) | SPEC, a comma list of "
    "op=prob:param with op in " + ", ".join(OPS) + " (prob default 0.1), e.g. "
    "'rotate=0.1:15,translate=0.1:0.1,zoom=0.1:0.1,contrast=0.1:0.2'"
)


@dataclass(frozen=True)
class AugOp:
    """One parsed op of a SPEC."""

    name: str
    prob: float
    param: Any

    def spec(self) -> str:
        return (
            self.name
            + f"={self.prob:g}"
            + ("" if self.param is None else f":{self.param:g}" if isinstance(self.param, float) else f":{self.param}")
        )


def dataset_family(dataset: str) -> str:
    """'histology', 'natural' or 'digits' (the safe default for anything unknown)."""
    if dataset in HISTOLOGY_DATASETS:
        return "histology"
    if dataset == "cifar10":
        return "natural"
    return "digits"


def resolve_spec(spec: str | None, dataset: str) -> str:
    """The SPEC a preset name stands for on a dataset ('' for none); a SPEC comes back unchanged."""
    spec = (spec or "none").strip()
    if spec in ("", "none"):
        return ""
    if spec in PRESETS["digits"]:
        return PRESETS[dataset_family(dataset)][spec]
    return spec


def _number(text: str, what: str, op: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise KerasDigitsError(f"--augment: {op}'s {what} must be a number, got {text!r}") from None


def parse_spec(spec: str) -> list[AugOp]:
    """Parse a SPEC (no preset names) into ops; any mistake is one KerasDigitsError line."""
    ops: list[AugOp] = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            raise KerasDigitsError(f"--augment {spec!r}: empty op (stray comma?)")
        name, _, rest = part.partition("=")
        name = name.strip().lower()
        if name not in OPS:
            raise KerasDigitsError(
                f"--augment: unknown op {name!r}; choose from {', '.join(OPS)} (or a preset: {', '.join(AUGMENTS)})"
            )
        if any(o.name == name for o in ops):
            raise KerasDigitsError(f"--augment: op {name!r} given twice")
        prob_text, colon, param_text = rest.partition(":")
        prob = DEFAULT_PROB if not prob_text.strip() else _number(prob_text, "probability", name)
        if not 0.0 <= prob <= 1.0:
            raise KerasDigitsError(f"--augment: {name}'s probability must be in [0, 1], got {prob_text}")
        default, kind = OPS[name]
        param_text = param_text.strip()
        if kind is None:
            if param_text:
                raise KerasDigitsError(f"--augment: {name} takes no parameter, got {param_text!r}")
            param = None
        elif not param_text:
            if colon:
                raise KerasDigitsError(f"--augment: {name}=PROB: needs a parameter after ':'")
            param = default
        elif kind == "mode":
            if param_text not in FLIP_MODES:
                raise KerasDigitsError(
                    f"--augment: flip mode must be one of {', '.join(FLIP_MODES)}, got {param_text!r}"
                )
            param = param_text
        else:
            param = _number(param_text, "parameter", name)
            top = 180.0 if kind == "deg" else 1.0
            if not 0.0 < param <= top:
                raise KerasDigitsError(f"--augment: {name}'s parameter must be in (0, {top:g}], got {param_text}")
        ops.append(AugOp(name, float(prob), param))
    return ops


# ---------------------------------------------------------------------------- the ops
def _seed_source_cls():
    """A SeedGenerator stand-in that hands Keras layers stateless seeds derived from a tensor."""
    import tensorflow as tf
    from keras.src.random.seed_generator import SeedGenerator

    class _TensorSeed(SeedGenerator):  # draw_seed() accepts SeedGenerator instances and calls next()
        def __init__(self, seed):
            self._seed = tf.cast(seed, tf.int64)
            self._calls = 0

        def next(self, ordered=True):
            self._calls += 1  # distinct stream for every draw inside one layer
            return self._seed + tf.constant([0, 7919], tf.int64) * self._calls

    return _TensorSeed


def _make_layer(op: AugOp, fill_mode: str):
    from keras import layers

    F32 = "float32"  # in tf.data, whatever the training precision (a global mixed policy would make them bfloat16)

    if op.name == "rotate":
        return layers.RandomRotation(op.param / 360.0, fill_mode=fill_mode, dtype=F32)
    if op.name == "translate":
        return layers.RandomTranslation(op.param, op.param, fill_mode=fill_mode, dtype=F32)
    if op.name == "zoom":
        return layers.RandomZoom(op.param, op.param, fill_mode=fill_mode, dtype=F32)
    if op.name == "shear":
        return layers.RandomShear(op.param, op.param, fill_mode=fill_mode, dtype=F32)
    if op.name == "contrast":
        return layers.RandomContrast(op.param, value_range=(0, 255), dtype=F32)
    if op.name == "brightness":
        return layers.RandomBrightness(op.param, value_range=(0, 255), dtype=F32)
    if op.name == "hue":
        return layers.RandomHue(op.param, value_range=(0, 255), dtype=F32)
    if op.name == "saturation":
        return layers.RandomSaturation(op.param, value_range=(0, 255), dtype=F32)
    return None  # rot90 and flip: done by hand below (RandomFlip would flip only half of its images)


def _rot90(images, seed):
    """Each image turned by its own random choice of 90, 180 or 270 degrees (square images)."""
    import tensorflow as tf

    k = tf.random.stateless_uniform(tf.shape(images)[:1], seed=seed, minval=1, maxval=4, dtype=tf.int32)
    r1 = tf.reverse(tf.transpose(images, [0, 2, 1, 3]), [2])
    r2 = tf.reverse(images, [1, 2])
    r3 = tf.reverse(tf.transpose(images, [0, 2, 1, 3]), [1])
    k = k[:, None, None, None]
    return tf.where(k == 1, r1, tf.where(k == 2, r2, r3))


def _flip(images, mode, seed):
    """Every image flipped (mode horizontal or vertical), or for horizontal_and_vertical each image
    given one of the three non-identity flips at random."""
    import tensorflow as tf

    if mode == "horizontal":
        return tf.reverse(images, [2])
    if mode == "vertical":
        return tf.reverse(images, [1])
    k = tf.random.stateless_uniform(tf.shape(images)[:1], seed=seed, minval=1, maxval=4, dtype=tf.int32)
    k = k[:, None, None, None]
    return tf.where(
        k == 1, tf.reverse(images, [2]), tf.where(k == 2, tf.reverse(images, [1]), tf.reverse(images, [1, 2]))
    )


def make_augment(
    spec: str | None,
    dataset: str,
    seed: int = 0,
    *,
    channels: int | None = None,
    image_shape: tuple[int, ...] | None = None,
) -> Callable | None:
    """A batch function for tf.data.map that returns (uint8 images, labels), or None for 'none'.

    Apply it with `augment_dataset` (batches zipped with ``tf.data.Dataset.random(seed)``: stateless,
    bit-reproducible). Mapped directly as ``ds.map(fn)`` over (images, labels) it also works, drawing
    its per-batch seeds from a seeded ``tf.random.Generator`` (reproducible only with sequential map
    calls). `channels` and `image_shape` let a bad SPEC fail here rather than inside tf.data.
    """
    resolved = resolve_spec(spec, dataset)
    if not resolved:
        return None
    ops = parse_spec(resolved)
    if channels == 1:
        bad = [o.name for o in ops if o.name in RGB_ONLY]
        if bad:
            raise KerasDigitsError(f"--augment: {', '.join(bad)} needs RGB images; {dataset} is greyscale")
    if image_shape is not None and image_shape[0] != image_shape[1] and any(o.name == "rot90" for o in ops):
        raise KerasDigitsError(f"--augment: rot90 needs square images, {dataset} has {tuple(image_shape[:2])}")
    import tensorflow as tf

    fill_mode = "constant" if dataset in BLACK_BACKGROUND else "reflect"
    seed_cls = _seed_source_cls()
    built = [(i, op, _make_layer(op, fill_mode)) for i, op in enumerate(ops) if op.prob > 0]

    state: dict[str, Any] = {}

    def augment(first, second):
        if isinstance(first, (tuple, list)):  # ((images, labels), batch_seed): via augment_dataset
            (images, labels), batch_seed = first, second
        else:  # (images, labels) from a plain ds.map: seeds from a stateful generator instead
            images, labels = first, second
            if "gen" not in state:
                with tf.init_scope():
                    state["gen"] = tf.random.Generator.from_seed(seed)
            batch_seed = state["gen"].uniform_full_int([], dtype=tf.int64)
        x = tf.cast(images, tf.float32)
        n = tf.shape(x)[:1]
        for i, op, layer in built:
            op_seed = tf.stack([tf.cast(batch_seed, tf.int64), tf.constant(1000 * (i + 1), tf.int64)])
            if op.name == "rot90":
                changed = _rot90(x, op_seed + tf.constant([0, 1], tf.int64))
            elif op.name == "flip":
                changed = _flip(x, op.param, op_seed + tf.constant([0, 1], tf.int64))
            else:
                transform = layer.get_random_transformation(x, training=True, seed=seed_cls(op_seed))
                changed = tf.cast(layer.transform_images(x, transform, training=True), tf.float32)
            if op.prob >= 1.0:
                x = changed
            else:
                mask = tf.random.stateless_uniform(n, seed=op_seed + tf.constant([0, 2], tf.int64)) < op.prob
                x = tf.where(mask[:, None, None, None], changed, x)
        x = tf.cast(tf.clip_by_value(tf.round(x), 0.0, 255.0), tf.uint8)
        return x, labels

    augment.spec = ",".join(o.spec() for o in ops)  # type: ignore[attr-defined]
    augment.seed = seed  # type: ignore[attr-defined]
    return augment


def augment_dataset(ds, augment: Callable | None, seed: int, epoch=None):
    """Map `augment` over a dataset of (uint8 images, labels) batches with per-batch stateless seeds;
    with `epoch` (`keras_digits.data.pipeline.epoch_variable`) they are a function of (seed, epoch)."""
    if augment is None:
        return ds
    import tensorflow as tf

    from keras_digits.data.pipeline import per_epoch, seed_stream, with_cardinality

    if epoch is None:
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
    else:
        seeds = per_epoch(seed_stream, seed, epoch)
    out = tf.data.Dataset.zip(ds, seeds).map(augment, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return with_cardinality(out, ds.cardinality()) if epoch is not None else out
