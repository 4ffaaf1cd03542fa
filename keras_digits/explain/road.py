"""ROAD, RemOve And Debias (Rong et al. 2022): pixel removal with noisy linear imputation instead of black.

Setting removed pixels to black (deletion) tells the model *where* they were by their shape, and scores
fall for that alone. ROAD fills each removed pixel with the weighted mean of its 8 neighbours (1/6 for the
4 direct ones, 1/12 for the diagonals; removed neighbours are unknowns of the same sparse linear system,
solved with scipy) plus Gaussian noise (std 1 % of the input range), so the filled image carries no trace
of the removal's shape.

Protocol: at each of `LEVELS` (10 %, 20 % ... 90 % of the pixels), MoRF removes the pixels the map ranks
highest (ties in a fixed random order), LeRF the lowest; the score is the target's probability; each
curve's mean over the levels is reported. MoRF lower is better, LeRF higher is better, and their gap
(LeRF - MoRF) higher is better.
"""

from __future__ import annotations

import numpy as np

from keras_digits.explain.core import Explainer
from keras_digits.explain.faithfulness import pixel_ranks

LEVELS = tuple(round(0.1 * k, 1) for k in range(1, 10))
NOISE = 0.01
NEIGHBOURS = (
    (-1, 0, 1 / 6),
    (1, 0, 1 / 6),
    (0, -1, 1 / 6),
    (0, 1, 1 / 6),
    (-1, -1, 1 / 12),
    (-1, 1, 1 / 12),
    (1, -1, 1 / 12),
    (1, 1, 1 / 12),
)
PROTOCOL = (
    f"pixels removed at {int(LEVELS[0] * 100)}..{int(LEVELS[-1] * 100)} % in steps of 10 %, highest-ranked first "
    "(MoRF) "
    "or lowest first (LeRF), filled by noisy linear imputation (8-neighbour weighted mean, noise 1 % of the range; "
    "Rong et al. 2022); score: target probability, mean over the levels; MoRF lower, LeRF higher, gap higher is better"
)


def impute(img: np.ndarray, removed: np.ndarray, rng: np.random.Generator, low: float, high: float) -> np.ndarray:
    """`img` (H, W, C) with the `removed` (H, W) pixels filled by noisy linear imputation."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.linalg import spsolve

    h, w = removed.shape
    rr, qq = np.nonzero(removed)
    u_count = len(rr)
    if u_count == 0:
        return img.astype(np.float32, copy=True)
    if u_count == h * w:
        return np.full(img.shape, img.mean(), np.float32)
    index = np.full((h, w), -1, np.int64)
    index[rr, qq] = np.arange(u_count)
    diag = np.full(u_count, 1e-9)  # keeps an isolated component solvable
    rhs = np.zeros((u_count, img.shape[-1]))
    rows, cols, vals = [], [], []
    for dr, dq, weight in NEIGHBOURS:
        r2, q2 = rr + dr, qq + dq
        ok = (r2 >= 0) & (r2 < h) & (q2 >= 0) & (q2 < w)
        own, r2, q2 = np.arange(u_count)[ok], r2[ok], q2[ok]
        diag[own] += weight
        unknown = removed[r2, q2]
        rows.append(own[unknown])
        cols.append(index[r2[unknown], q2[unknown]])
        vals.append(np.full(int(unknown.sum()), -weight))
        np.add.at(rhs, own[~unknown], weight * img[r2[~unknown], q2[~unknown]].astype(np.float64))
    rows.append(np.arange(u_count))
    cols.append(np.arange(u_count))
    vals.append(diag)
    a = coo_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(u_count, u_count))
    sol = spsolve(a.tocsc(), rhs)
    sol = np.asarray(sol).reshape(u_count, -1) + rng.normal(0.0, NOISE * (high - low), (u_count, img.shape[-1]))
    out = img.astype(np.float32, copy=True)
    out[rr, qq] = np.clip(sol, low, high)
    return out


def curves(ex: Explainer, x, t, c, maps: np.ndarray, seed: int = 0, label: str = "") -> tuple[np.ndarray, np.ndarray]:
    """(MoRF, LeRF) probability curves, each (N, len(LEVELS))."""
    n, h, w = maps.shape
    ranks = pixel_ranks(maps, seed).reshape(n, h, w)
    counts = np.array([round(level * h * w) for level in LEVELS])

    def make(order: str):
        def build(i: np.ndarray, v: np.ndarray) -> np.ndarray:
            out = np.empty((len(i), *x.shape[1:]), np.float32)
            for j, (k, lv) in enumerate(zip(i, v)):
                cut = ranks[k] < counts[lv] if order == "morf" else ranks[k] >= h * w - counts[lv]
                rng = np.random.default_rng([seed, 47, int(k), int(lv), order == "morf"])
                out[j] = impute(x[k], cut, rng, ex.low, ex.high)
            return out

        return build

    morf = ex.pair_scores(x, t, c, make("morf"), len(LEVELS), label=f"road morf {label}".strip())
    lerf = ex.pair_scores(x, t, c, make("lerf"), len(LEVELS), label=f"road lerf {label}".strip())
    return morf, lerf
