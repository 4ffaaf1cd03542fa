"""Every metric of an explanation, on one set of images: deletion/insertion AUC (faithfulness), MuFidelity,
ROAD, the ink-mask pointing game and relevance mass, complexity and sparseness, max-sensitivity and the
agreement between methods. Each is compared with a random map where a random map means something; each
section carries its protocol (written into explain.json and shown in the report).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from keras_digits.errors import KerasDigitsError
from keras_digits.explain.stats import beats, mean_se

METRICS: dict[str, str] = {
    "deletion": "deletion and insertion AUC (Petsiuk et al. 2018)",
    "mufidelity": "MuFidelity (Bhatt et al. 2020)",
    "road": "ROAD, MoRF and LeRF with noisy linear imputation (Rong et al. 2022)",
    "ink": "pointing game and relevance mass on the digit's ink (light digits on black only)",
    "complexity": "complexity (entropy) and sparseness (Gini)",
    "sensitivity": "max-sensitivity under small input noise (Yeh et al. 2019)",
    "agreement": "rank agreement between methods; low-agreement images flagged",
}


def parse_metrics(text: str) -> list[str]:
    """'all' or 'road,ink' -> metric names in the canonical order; unknown names are one error."""
    names = set()
    for raw in text.split(","):
        name = raw.strip().lower()
        if not name:
            continue
        if name == "all":
            names |= set(METRICS)
        elif name in ("insertion", "faithfulness"):
            names.add("deletion")
        elif name in METRICS:
            names.add(name)
        else:
            raise KerasDigitsError(f"unknown metric {raw.strip()!r}; known: {', '.join(METRICS)} (or all)")
    if not names:
        raise KerasDigitsError(f"--metrics is empty; known: {', '.join(METRICS)} (or all)")
    return [m for m in METRICS if m in names]


def evaluate(
    ex,
    x: np.ndarray,
    t: np.ndarray,
    c: np.ndarray,
    maps: dict[str, np.ndarray],
    which: list[str],
    compute: Callable[[str, np.ndarray, np.ndarray, np.ndarray], np.ndarray] | None = None,
    seed: int = 0,
    sensitivity_n: int = 8,
    ground_truth: np.ndarray | None = None,
    say: Callable[[str], object] = lambda text: None,
) -> dict:
    """The metrics in `which` (see METRICS) for each method's `maps` of float images `x` (targets t, contrasts
    c). `compute(method, x, t, c)` re-explains noisy copies (max-sensitivity). `ground_truth`: (N, H, W)
    masks for the localisation metrics; without them the ink of light-on-dark digits is used when the images
    are such, and the localisation metrics are skipped otherwise."""
    from keras_digits.explain.faithfulness import random_maps

    rand = random_maps(len(x), x.shape[1:3], seed)
    out: dict = {"n": int(len(x)), "computed": list(which), "seconds": {}}

    def timed(name: str, fn) -> None:
        start = time.perf_counter()
        result = fn()
        if result is not None:
            out[name] = result
        out["seconds"][name] = round(time.perf_counter() - start, 2)
        say(f"  {name}: {out['seconds'][name]:.1f} s")

    if "deletion" in which:
        from keras_digits.explain import faithfulness

        def deletion():
            out.update(faithfulness.evaluate(ex, x, t, c, maps, seed=seed))

        timed("deletion", deletion)
    if "mufidelity" in which:
        timed("mufidelity", lambda: _mufidelity(ex, x, t, c, maps, rand, seed))
    if "road" in which:
        timed("road", lambda: _road(ex, x, t, c, maps, rand, seed))
    if "ink" in which:
        timed("localisation", lambda: _localisation(ex, x, maps, rand, ground_truth))
    if "complexity" in which:
        timed("complexity", lambda: _complexity(maps, rand))
    if "sensitivity" in which and compute is not None:
        timed("sensitivity", lambda: _sensitivity(ex, x, t, c, maps, compute, sensitivity_n, seed))
    if "agreement" in which and len(maps) > 1:
        from keras_digits.explain.agreement import PROTOCOL, agreement

        timed("agreement", lambda: {**agreement(maps), "protocol": PROTOCOL})
    return out


def _mufidelity(ex, x, t, c, maps, rand, seed) -> dict:
    from keras_digits.explain.mufidelity import PROTOCOL, mufidelity, score_drops, subset_masks

    masks = subset_masks(x.shape[1:3], seed=seed)
    drops = score_drops(ex, x, t, c, masks)
    ref = mufidelity(rand, masks, drops)
    rows = {"random": mean_se(ref)}
    for name, m in maps.items():
        corr = mufidelity(m, masks, drops)
        rows[name] = {**mean_se(corr), "beats_random": beats(corr - ref)}
    return {"protocol": PROTOCOL, "methods": rows}


def _road(ex, x, t, c, maps, rand, seed) -> dict:
    from keras_digits.explain import road

    def one(name, m):
        morf, lerf = road.curves(ex, x, t, c, m, seed=seed, label=name)
        return morf.mean(axis=1), lerf.mean(axis=1)

    rm, rl = one("random", rand)
    rows = {"random": {"morf": mean_se(rm), "lerf": mean_se(rl), "gap": mean_se(rl - rm)}}
    for name, m in maps.items():
        morf, lerf = one(name, m)
        rows[name] = {
            "morf": mean_se(morf),
            "lerf": mean_se(lerf),
            "gap": mean_se(lerf - morf),
            "beats_random": beats((lerf - morf) - (rl - rm)),
        }
    return {"protocol": road.PROTOCOL, "levels": list(road.LEVELS), "methods": rows}


def _localisation(ex, x, maps, rand, masks) -> dict | None:
    from keras_digits.explain import localisation as loc

    kind = "given"
    if masks is None:
        if not loc.dark_background(x, ex.low, ex.high):
            return {"skipped": "the images are not light digits on a dark background, so there is no ink mask"}
        masks, kind = loc.ink_mask(x, ex.low, ex.high), "ink"
    masks = np.asarray(masks, bool)
    fraction = masks.reshape(len(masks), -1).mean(axis=1)
    ref_point, ref_mass = loc.pointing_game(rand, masks), loc.relevance_mass(rand, masks)
    rows = {"random": {"pointing": mean_se(ref_point), "relevance_mass": mean_se(ref_mass)}}
    for name, m in maps.items():
        point, mass = loc.pointing_game(m, masks), loc.relevance_mass(m, masks)
        rows[name] = {
            "pointing": mean_se(point),
            "relevance_mass": mean_se(mass),
            "beats_random": beats(mass - ref_mass),
        }
    return {"protocol": loc.PROTOCOL, "mask": kind, "mask_fraction": mean_se(fraction), "methods": rows}


def _complexity(maps, rand) -> dict:
    from keras_digits.explain.complexity import PROTOCOL, complexity, sparseness

    rows = {
        name: {"complexity": mean_se(complexity(m)), "sparseness": mean_se(sparseness(m))} for name, m in maps.items()
    }
    return {
        "protocol": PROTOCOL,
        "methods": {
            "random": {"complexity": mean_se(complexity(rand)), "sparseness": mean_se(sparseness(rand))},
            **rows,
        },
    }


def _sensitivity(ex, x, t, c, maps, compute, n, seed) -> dict:
    from keras_digits.explain import METHODS
    from keras_digits.explain.sensitivity import PROTOCOL, max_sensitivity, noisy_copies

    k = min(n, len(x))
    copies = noisy_copies(x[:k], ex.low, ex.high, seed=seed)
    rows, skipped = {}, []
    for name in maps:
        if name not in METHODS:  # a map from elsewhere cannot be re-explained
            skipped.append(name)
            continue

        def again(xs, name=name):
            return compute(name, xs, t[:k], c[:k])

        rows[name] = mean_se(max_sensitivity(again, again(x[:k]), copies))  # the base with the same settings
    return {"protocol": PROTOCOL, "n": k, "methods": rows, "skipped": skipped}
