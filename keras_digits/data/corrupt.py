"""Seeded image corruptions for robustness checks, in the spirit of MNIST-C (Mu & Gilmer 2019) and
MedMNIST-C: applied to evaluation data only, never to training.

Each corruption has five severities (1 mild .. 5 strong); `grey` and `channel_mean` (colour images
only) have one. Images are uint8 (N, H, W, C) in and out. Per-image randomness (noise, the sign of
a rotation, a shift's direction) comes from a generator seeded by (seed, corruption, severity).

| name | what | severities 1..5 |
| --- | --- | --- |
| noise | additive Gaussian noise, std in 0..255 units | 8, 16, 24, 32, 48 |
| blur | Gaussian blur, sigma in pixels | 0.5, 0.75, 1, 1.5, 2 |
| rotate | rotation about the centre, degrees, random sign | 5, 10, 15, 20, 30 |
| shift | translation by a fraction of the side, random direction | 0.05, 0.1, 0.15, 0.2, 0.25 |
| contrast | pixels pulled towards the image mean, kept fraction | 0.8, 0.6, 0.4, 0.3, 0.2 |
| brightness | added to every pixel (clipped) | 20, 40, 60, 80, 100 |
| jpeg | JPEG compression quality | 80, 60, 40, 20, 10 |
| grey | colour removed (ITU-R 601 luma in every channel) | - |
| channel_mean | each image's per-channel means replaced by the split's (colour cast removed) | - |
"""

from __future__ import annotations

import io
import zlib

import numpy as np

from keras_digits.errors import KerasDigitsError

MOVES = ("rotate", "shift")  # corruptions that move the content (a mask of the clean image no longer fits)
LEVELS: dict[str, tuple[float, ...]] = {
    "noise": (8, 16, 24, 32, 48),
    "blur": (0.5, 0.75, 1.0, 1.5, 2.0),
    "rotate": (5, 10, 15, 20, 30),
    "shift": (0.05, 0.1, 0.15, 0.2, 0.25),
    "contrast": (0.8, 0.6, 0.4, 0.3, 0.2),
    "brightness": (20, 40, 60, 80, 100),
    "jpeg": (80, 60, 40, 20, 10),
    "grey": (0,),
    "channel_mean": (0,),
}
COLOUR_ONLY = ("grey", "channel_mean")


def parse(specs: list[str], channels: int) -> list[tuple[str, int]]:
    """['noise', 'blur:2', 'all'] -> [(name, severity), ...]; no severity means every one."""
    out: list[tuple[str, int]] = []
    for spec in specs:
        name, _, sev = spec.strip().partition(":")
        name = name.strip().lower()
        names = [n for n in LEVELS if channels == 3 or n not in COLOUR_ONLY] if name == "all" else [name]
        for n in names:
            if n not in LEVELS:
                raise KerasDigitsError(f"unknown corruption {name!r}; known: {', '.join(LEVELS)} (or all)")
            if n in COLOUR_ONLY and channels != 3:
                raise KerasDigitsError(f"corruption {n} needs colour images; these have {channels} channel(s)")
            count = len(LEVELS[n])
            if sev and name == "all" and count == 1:
                out.append((n, 1))  # "all:3": the one-level corruptions at their only level
            elif sev:
                try:
                    level = int(sev)
                except ValueError:
                    level = -1
                if not 1 <= level <= count:
                    raise KerasDigitsError(
                        f"severity of {n} must be {'1' if count == 1 else f'1..{count}'}, got {sev!r}"
                    )
                out.append((n, level))
            else:
                out += [(n, level) for level in range(1, count + 1)]
    return list(dict.fromkeys(out))


def apply(x: np.ndarray, name: str, severity: int, seed: int = 0) -> np.ndarray:
    """The corrupted copy of uint8 images `x` (N, H, W, C)."""
    from scipy import ndimage

    level = LEVELS[name][severity - 1]
    rng = np.random.default_rng([seed, zlib.crc32(name.encode()), severity])
    f = x.astype(np.float32)
    if name == "noise":
        f = f + rng.normal(0.0, level, f.shape)
    elif name == "blur":
        f = ndimage.gaussian_filter(f, sigma=(0, level, level, 0), mode="nearest")
    elif name == "rotate":
        signs = rng.choice([-1.0, 1.0], len(f))
        f = np.stack(
            [
                ndimage.rotate(
                    im,
                    s * level,
                    axes=(0, 1),
                    reshape=False,
                    order=1,
                    mode="constant",
                    cval=float(np.median(_border(im))),
                )
                for im, s in zip(f, signs)
            ]
        )
    elif name == "shift":
        side = min(f.shape[1:3])
        angles = rng.uniform(0, 2 * np.pi, len(f))
        f = np.stack(
            [
                ndimage.shift(
                    im,
                    (level * side * np.sin(a), level * side * np.cos(a), 0),
                    order=1,
                    mode="constant",
                    cval=float(np.median(_border(im))),
                )
                for im, a in zip(f, angles)
            ]
        )
    elif name == "contrast":
        mean = f.mean(axis=(1, 2, 3), keepdims=True)
        f = mean + (f - mean) * level
    elif name == "brightness":
        f = f + level
    elif name == "jpeg":
        f = np.stack([_jpeg(im, int(level)) for im in x]).astype(np.float32)
    elif name == "grey":
        luma = (f[..., :3] * np.array([0.299, 0.587, 0.114], np.float32)).sum(axis=-1, keepdims=True)
        f = np.repeat(luma, f.shape[-1], axis=-1)
    elif name == "channel_mean":
        f = f - f.mean(axis=(1, 2), keepdims=True) + f.mean(axis=(0, 1, 2), keepdims=True)
    return np.clip(np.rint(f), 0, 255).astype(np.uint8)


def _border(im: np.ndarray) -> np.ndarray:
    return np.concatenate([im[0].ravel(), im[-1].ravel(), im[:, 0].ravel(), im[:, -1].ravel()])


def _jpeg(im: np.ndarray, quality: int) -> np.ndarray:
    from PIL import Image

    grey = im.shape[-1] == 1
    pil = Image.fromarray(im[..., 0] if grey else im)
    buf = io.BytesIO()
    pil.save(buf, format="JPEG", quality=quality)
    out = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("L" if grey else "RGB"))
    return out[..., None] if grey else out
