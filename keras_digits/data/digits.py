"""scikit-learn's bundled 8x8 handwritten digits (1,797 images), upsampled to 28x28: the offline default."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from keras_digits.data.base import DatasetSpec, RawSplits, validate_arrays


def upsample(images: np.ndarray, size: int = 28) -> np.ndarray:
    """Bilinear resize of (N, h, w) uint8 images to (N, size, size)."""
    from PIL import Image

    return np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.BILINEAR)) for im in images])


def load_digits(spec: DatasetSpec, data_dir: Path | None = None) -> RawSplits:
    """Load sklearn's digits (0..16 grey levels) as uint8 28x28; no official split, so test is carved later."""
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    images = np.clip(np.rint(bunch.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    x = upsample(images, spec.image_shape[0])
    x, y = validate_arrays(spec.name, "all", x, bunch.target, spec.num_classes)
    return RawSplits(train=(x, y), test=None, source="sklearn.datasets.load_digits")
