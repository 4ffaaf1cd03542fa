"""Ground truth for digits: does the map point at the digit's ink?

On a digit drawn light on a dark background (MNIST, scikit-learn's digits, digit-normalised photos) the ink
is known for free: the pixels brighter than a quarter of the input range above black (`ink_mask`). Two
scores against it, as Quantus defines them:

* pointing game (Zhang et al. 2018): whether the map's highest pixel lies on the ink, within `TOLERANCE`
  (1) pixel; a map with no single highest pixel (constant) scores nothing;
* relevance mass (Arras et al. 2022): the share of the map's positive relevance that lies on the ink.

A random map scores about the ink's share of the image on both, so they are read against the ink fraction.
The ink is what a digit *is*, not necessarily all the model uses: the empty middle of a 0 is evidence too,
so a faithful map need not reach 1. Any other mask (a planted signal, a segmentation) can be passed in.
"""

from __future__ import annotations

import numpy as np

INK = 0.25
TOLERANCE = 1
PROTOCOL = (
    f"ink: pixels brighter than {INK:g} of the input range above black; pointing game: the map's highest pixel "
    f"on the ink within {TOLERANCE} px; relevance mass: share of positive relevance on the ink (a random map "
    "scores about the ink fraction)"
)


def ink_mask(x: np.ndarray, low: float, high: float) -> np.ndarray:
    """(N, H, W) bool: the ink of light-on-dark digits (mean over channels above low + INK * range)."""
    return np.asarray(x, np.float64).mean(axis=-1) > low + INK * (high - low)


def dark_background(x: np.ndarray, low: float, high: float) -> bool:
    """Whether images look like light digits on black: grey (every channel alike), some ink, and a one-pixel border
    averaging under a fifth of the range (scikit-learn's digits fill their frame: about 15 %; MNIST's: 0)."""
    x = np.asarray(x, np.float64)
    if not len(x) or (x.shape[-1] > 1 and np.abs(x - x.mean(axis=-1, keepdims=True)).max() > 0.02 * (high - low)):
        return False
    g = x.mean(axis=-1)
    border = np.concatenate([g[:, 0, :], g[:, -1, :], g[:, :, 0], g[:, :, -1]], axis=1)
    return float(border.mean()) < low + 0.2 * (high - low) and bool(ink_mask(x, low, high).any())


def _dilate(mask: np.ndarray, steps: int) -> np.ndarray:
    from scipy.ndimage import binary_dilation

    if steps <= 0:
        return mask
    return np.stack([binary_dilation(m, iterations=steps, structure=np.ones((3, 3), bool)) for m in mask])


def pointing_game(maps: np.ndarray, masks: np.ndarray, tolerance: int = TOLERANCE) -> np.ndarray:
    """Per image: 1.0 when the map's maximum lies on the (dilated) mask, 0.0 when not, NaN for a constant map."""
    flat = maps.reshape(len(maps), -1)
    hit = _dilate(masks, tolerance).reshape(len(masks), -1)[np.arange(len(flat)), flat.argmax(axis=1)]
    constant = flat.max(axis=1) == flat.min(axis=1)
    return np.where(constant, np.nan, hit.astype(np.float64))


def relevance_mass(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Per image: positive relevance on the mask / all positive relevance (NaN when the map has none)."""
    pos = np.maximum(maps.reshape(len(maps), -1).astype(np.float64), 0.0)
    total = pos.sum(axis=1)
    inside = (pos * masks.reshape(len(masks), -1)).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, inside / np.where(total > 0, total, 1.0), np.nan)
