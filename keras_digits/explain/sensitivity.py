"""Max-sensitivity (Yeh et al. 2019): how much a map changes under input noise too small to matter.

Protocol: `SAMPLES` (5) copies of the image with uniform noise in +-`RADIUS` (2 %) of the input range
(clipped to it; the same noise for every method), each explained for the same target; the score is the
largest ||a(x + d) - a(x)|| / ||a(x)|| (Frobenius norms) over the copies. Lower is more stable. Captum's
`sensitivity_max` uses the same radius; Quantus draws more samples (its default 200), at 40x the cost.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

SAMPLES, RADIUS = 5, 0.02
PROTOCOL = (
    f"largest relative change ||a(x+d) - a(x)|| / ||a(x)|| over {SAMPLES} copies with uniform noise of "
    f"+-{int(RADIUS * 100)} % of the input range, same target (Yeh et al. 2019); lower is more stable"
)


def noisy_copies(x: np.ndarray, low: float, high: float, samples: int = SAMPLES, seed: int = 0) -> list[np.ndarray]:
    out = []
    for s in range(samples):
        d = np.random.default_rng([seed, 43, s]).uniform(-RADIUS, RADIUS, x.shape) * (high - low)
        out.append(np.clip(x + d, low, high).astype(np.float32))
    return out


def max_sensitivity(
    compute: Callable[[np.ndarray], np.ndarray], maps: np.ndarray, copies: list[np.ndarray]
) -> np.ndarray:
    """Per image: the worst relative change of `compute(copy)` from `maps` (NaN for an all-zero map)."""
    base = maps.reshape(len(maps), -1).astype(np.float64)
    norm = np.linalg.norm(base, axis=1)
    worst = np.zeros(len(maps))
    for xp in copies:
        diff = np.linalg.norm(compute(xp).reshape(len(maps), -1).astype(np.float64) - base, axis=1)
        worst = np.maximum(worst, diff / np.where(norm > 0, norm, 1.0))
    return np.where(norm > 0, worst, np.nan)
