"""MNIST-style digit normalisation in TensorFlow ops (so it can live inside a SavedModel).

The MNIST database describes its own construction (LeCun, Cortes and Burges, "The MNIST database of
handwritten digits", http://yann.lecun.com/exdb/mnist/): "The original black and white (bilevel)
images from NIST were size normalized to fit in a 20x20 pixel box while preserving their aspect
ratio. The resulting images contain grey levels as a result of the anti-aliasing technique used by
the normalization algorithm. the images were centered in a 28x28 image by computing the center of
mass of the pixels, and translating the image so as to position this point at the center of the
28x28 field." Measured on the real MNIST test set (../shared/data/mnist.npz, first 5,000 images): the
ink's bounding box has a longer side of exactly 20 px, and the centre of mass sits at (14.0, 14.0)
in pixel-index coordinates (sd 0.29).

`normalize_digit` does the same to an arbitrary photo or scan of one digit:

1. grey-scale (ITU-R 601 luma for colour, alpha dropped);
2. polarity: MNIST is light ink on a dark field. The background level is the median of the image's
   border (its outer tenth); when the image's darkest pixels (0.1st percentile) lie further below it
   than its brightest (99.9th percentile) lie above it, the ink is dark on light paper and the image
   is inverted;
3. background: that level is subtracted (clipped at 0) and the rest stretched so the ink's 99th
   percentile is 255. An image with fewer than 4 pixels (or 0.05% of its pixels) at least `MIN_INK`
   (10% of the range) from the background has no ink: it is only grey-scaled and resized, and the
   `has_ink` flag says so;
4. bounding box of the ink, robust to faint noise: of the pixels above 20% of the ink's peak, the
   rows and columns between the 0.1% and 99.9% quantiles of their mass (on MNIST's own test images
   this reproduces the image: 0.987 accuracy with and without it on the first 3,000, mean absolute
   pixel change under 1 grey level);
5. the box is scaled so its longer side is 20 px, aspect ratio kept, bilinear with antialiasing;
6. it is placed in the 28x28 field by the integer shift that brings its centre of mass nearest to
   (14, 14) (within half a pixel, as in MNIST itself; a sub-pixel shift would blur it).
"""

from __future__ import annotations

from typing import Any

FIELD = 28
BOX = 20
GREY_WEIGHTS = (0.299, 0.587, 0.114)  # PIL's convert("L") (ITU-R 601-2 luma)
MIN_INK = 25.5  # 10% of the 0..255 range, after background subtraction
MIN_INK_PIXELS = 4
INK_LEVEL = 0.2  # pixels above this fraction of the peak count for the bounding box
MASS_QUANTILES = (0.001, 0.999)


def _grey(x):
    import tensorflow as tf

    c = tf.shape(x)[-1]
    return tf.cond(
        c >= 3,
        lambda: tf.reduce_sum(x[..., :3] * tf.constant(GREY_WEIGHTS), axis=-1, keepdims=True),
        lambda: x[..., :1],
    )


def _percentile(values, q: float):
    """The q-quantile (0..1) of a 1-D tensor (nearest rank)."""
    import tensorflow as tf

    ordered = tf.sort(values)
    n = tf.shape(ordered)[0]
    return ordered[tf.clip_by_value(tf.cast(tf.round(q * tf.cast(n - 1, tf.float32)), tf.int32), 0, n - 1)]


def _quantile_range(mass, lo: float, hi: float):
    """First and last index whose cumulative share of `mass` (1-D) reaches lo and hi."""
    import tensorflow as tf

    cum = tf.cumsum(mass) / tf.maximum(tf.reduce_sum(mass), 1e-12)
    first = tf.argmax(tf.cast(cum >= lo, tf.int32), output_type=tf.int32)
    last = tf.argmax(tf.cast(cum >= hi, tf.int32), output_type=tf.int32)
    return first, tf.maximum(last, first)


def _ink(image):
    """Steps 1-3: (grey float32 (H, W), ink above the background (H, W), the ink's peak, has_ink, inverted)."""
    import tensorflow as tf

    x = _grey(tf.cast(image, tf.float32))[..., 0]
    grey = x
    h, w = tf.shape(x)[0], tf.shape(x)[1]
    b = tf.maximum(1, tf.minimum(h, w) // 10)
    border = tf.concat(
        [tf.reshape(x[:b], [-1]), tf.reshape(x[-b:], [-1]), tf.reshape(x[:, :b], [-1]), tf.reshape(x[:, -b:], [-1])],
        axis=0,
    )
    background = _percentile(border, 0.5)  # the median: ink reaching into the border does not move it
    flat = tf.reshape(x, [-1])
    darkest, brightest = _percentile(flat, 0.001), _percentile(flat, 0.999)
    invert = (background - darkest) > (brightest - background)  # the ink departs downwards: dark on light
    x = tf.where(invert, 255.0 - x, x)
    background = tf.where(invert, 255.0 - background, background)
    ink = tf.nn.relu(x - background)
    # ink: at least MIN_INK_PIXELS pixels (and 0.05% of the image) MIN_INK above the background, so a
    # speck or the noise of a blank photo is not a digit; the peak is their 99th percentile, not one pixel
    inked = tf.boolean_mask(tf.reshape(ink, [-1]), tf.reshape(ink >= MIN_INK, [-1]))
    count = tf.size(inked)
    has_ink = count >= tf.maximum(MIN_INK_PIXELS, tf.cast(tf.cast(tf.size(ink), tf.float32) * 0.0005, tf.int32))
    peak = tf.cond(count > 0, lambda: _percentile(inked, 0.99), lambda: tf.constant(MIN_INK))
    return grey, ink, peak, has_ink, invert


def _shape_ink(ink, peak, field: int, box: int):
    """Steps 3-6 on inked images: (stretched ink, its ink box, the box scaled to `box` px, the field with the
    box placed by its centre of mass), all float32 2-D."""
    import tensorflow as tf

    stretched = tf.minimum(ink * (255.0 / tf.maximum(peak, 1e-6)), 255.0)
    strong = tf.where(stretched >= INK_LEVEL * 255.0, stretched, 0.0)
    r0, r1 = _quantile_range(tf.reduce_sum(strong, axis=1), *MASS_QUANTILES)
    c0, c1 = _quantile_range(tf.reduce_sum(strong, axis=0), *MASS_QUANTILES)
    crop = stretched[r0 : r1 + 1, c0 : c1 + 1]
    ch, cw = tf.cast(r1 - r0 + 1, tf.float32), tf.cast(c1 - c0 + 1, tf.float32)
    scale = float(box) / tf.maximum(ch, cw)
    nh = tf.clip_by_value(tf.cast(tf.round(ch * scale), tf.int32), 1, box)
    nw = tf.clip_by_value(tf.cast(tf.round(cw * scale), tf.int32), 1, box)
    glyph = tf.image.resize(crop[..., None], tf.stack([nh, nw]), method="bilinear", antialias=True)[..., 0]
    glyph = tf.clip_by_value(glyph, 0.0, 255.0)
    mass = tf.maximum(tf.reduce_sum(glyph), 1e-6)
    cy = tf.reduce_sum(glyph * tf.cast(tf.range(nh), tf.float32)[:, None]) / mass
    cx = tf.reduce_sum(glyph * tf.cast(tf.range(nw), tf.float32)[None, :]) / mass
    # the integer shift that brings the centre of mass nearest (field/2, field/2), as MNIST's own images
    # have it (their centre of mass spreads by 0.29 px around (14.0, 14.0)): no resampling blur
    top = tf.clip_by_value(tf.cast(tf.round(field / 2 - cy), tf.int32), 0, field - nh)
    left = tf.clip_by_value(tf.cast(tf.round(field / 2 - cx), tf.int32), 0, field - nw)
    placed = tf.pad(glyph, [[top, field - nh - top], [left, field - nw - left]])
    return stretched, crop, glyph, tf.clip_by_value(tf.round(placed), 0.0, 255.0)


def _plain(image, field: int):
    import tensorflow as tf

    out = tf.image.resize(_grey(tf.cast(image, tf.float32)), [field, field], method="bilinear", antialias=True)
    return tf.clip_by_value(tf.round(out), 0.0, 255.0)


def normalize_digit(image, field: int = FIELD, box: int = BOX):
    """One image (H, W, C) of any size, 0..255 (any dtype) -> (float32 (field, field, 1) on the 0..255 uint8
    grid, has_ink bool). See the module docstring; without ink the image is only grey-scaled and resized."""
    import tensorflow as tf

    _, ink, peak, has_ink, _ = _ink(image)
    out = tf.cond(has_ink, lambda: _shape_ink(ink, peak, field, box)[-1][..., None], lambda: _plain(image, field))
    return tf.ensure_shape(out, [field, field, 1]), has_ink


def digit_steps(image, field: int = FIELD, box: int = BOX) -> tuple[list[tuple[str, Any]], bool]:
    """The normalisation of one image step by step, for showing (eager): ([(caption, uint8 2-D image)], has_ink).
    Steps: grey; polarity and background (light ink on black, stretched); the ink box; scaled to `box` px;
    placed by its centre of mass in the field. Without ink: grey, then the plain resize."""
    import numpy as np

    def u8(t) -> np.ndarray:
        return np.clip(np.rint(np.asarray(t)), 0, 255).astype(np.uint8)

    grey, ink, peak, has_ink, invert = _ink(image)
    steps = [("grey", u8(grey))]
    if not bool(has_ink):
        return [*steps, (f"no ink: resized to {field}x{field}", u8(_plain(image, field)[..., 0]))], False
    stretched, crop, glyph, placed = _shape_ink(ink, peak, field, box)
    polarity = "inverted (dark ink on light)" if bool(invert) else "light ink on dark"
    return [
        *steps,
        (f"polarity: {polarity}, background removed", u8(stretched)),
        ("ink box", u8(crop)),
        (f"scaled to {box} px", u8(glyph)),
        (f"centre of mass centred in {field}x{field}", u8(placed)),
    ], True


def normalize_digits(images, field: int = FIELD, box: int = BOX):
    """A batch (N, H, W, C) -> (float32 (N, field, field, 1), has_ink (N,) bool), image by image."""
    import tensorflow as tf

    return tf.map_fn(
        lambda im: normalize_digit(im, field, box),
        images,
        fn_output_signature=(tf.TensorSpec([field, field, 1], tf.float32), tf.TensorSpec([], tf.bool)),
    )


_TRACED = None


def normalize_batch(images):
    """`normalize_digits` on a uint8 batch through one traced graph (any batch size, height, width and
    channel count share it): what predict uses, much faster than eager `map_fn`."""
    global _TRACED
    import tensorflow as tf

    if _TRACED is None:
        _TRACED = tf.function(normalize_digits, input_signature=[tf.TensorSpec([None, None, None, None], tf.uint8)])
    return _TRACED(tf.convert_to_tensor(images, tf.uint8))
