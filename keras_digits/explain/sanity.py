"""The model-parameter randomization test (Adebayo et al., "Sanity Checks for Saliency Maps", 2018).

Cascading randomization from the top: the layers with weights, from the output backwards, are
randomized one group after another, and after each group every method's maps (same images, same
targets) are compared with the trained model's by Spearman rank correlation of their absolute values
(per image, then averaged). A method that explains the *model* must change when the model is
destroyed; one whose maps stay alike (an edge detector of the input, say) fails.

Randomizing a layer permutes the values of each of its weight tensors at random (seeded): the trained
values' distribution is kept, so activations keep their scale (a fresh initialisation can make a
BatchNorm-free net explode or vanish), and their learned arrangement is destroyed. The trained weights are
restored afterwards.

Verdict: a method *passes* when its mean correlation with the fully randomized model is within
+-`PASS_BELOW` (0.5): under half the rank agreement left once nothing learned remains. A strong
*negative* correlation fails too: a map that highlights exactly the complement of what it highlighted
before (the background instead of the digit) still mirrors the input's structure, not the model.

Background-aware variant: on MNIST, 80 % of the pixels are black, where IG from a black baseline and a
black occluding patch are 0 whatever the model; those shared zeros tie in rank and keep the correlation
high. With `foreground` masks (the pixels that differ from black) the correlation is also computed over
the foreground only, and a method gets a second verdict from it.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from keras_digits.explain.graph import flat_layers

PASS_BELOW = 0.5
DEFAULT_STEPS = 6


def weighted_layers(model) -> list[tuple[str, object]]:
    """(path, layer) of each layer with weights, nested models walked through, in execution order."""
    return [(path, layer) for path, layer, _ in flat_layers(model) if layer.weights]


def cascade(n_layers: int, steps: int) -> list[int]:
    """How many top layers are randomized at each step: every count from 1 to n_layers when n_layers
    <= steps; otherwise up to `steps` counts from 1 (the output layer) to n_layers (all), spaced
    geometrically (the top layers, where maps change most, get the finer steps)."""
    if n_layers <= 0:
        return []
    if n_layers <= steps:
        return list(range(1, n_layers + 1))
    if steps <= 1:
        return [n_layers]
    points = np.unique(np.round(np.geomspace(1, n_layers, steps)).astype(int))
    return [int(p) for p in points]


def spearman(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-row Spearman correlation of |a| and |b| ((N, ...) each); 0 where either row is constant
    (a map with no ranking left shares none with the original)."""
    from scipy.stats import rankdata

    ra = rankdata(np.abs(a).reshape(len(a), -1), axis=1)
    rb = rankdata(np.abs(b).reshape(len(b), -1), axis=1)
    ra -= ra.mean(axis=1, keepdims=True)
    rb -= rb.mean(axis=1, keepdims=True)
    den = np.sqrt((ra * ra).sum(axis=1) * (rb * rb).sum(axis=1))
    return np.where(den > 0, (ra * rb).sum(axis=1) / np.where(den > 0, den, 1.0), 0.0)


def spearman_within(a: np.ndarray, b: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Per-row Spearman correlation of |a| and |b| over the pixels of each row's mask (NaN under 3 pixels)."""
    out = np.full(len(a), np.nan)
    for i in range(len(a)):
        m = masks[i].reshape(-1)
        if m.sum() >= 3:
            out[i] = spearman(a[i].reshape(1, -1)[:, m], b[i].reshape(1, -1)[:, m])[0]
    return out


def randomize(layer, rng: np.random.Generator) -> None:
    for var in layer.weights:
        values = np.asarray(var.numpy())
        var.assign(rng.permutation(values.reshape(-1)).reshape(values.shape))


def run(
    model,
    compute: Callable[[str], np.ndarray],
    methods: list[str],
    originals: dict[str, np.ndarray],
    steps: int = DEFAULT_STEPS,
    seed: int = 0,
    foreground: np.ndarray | None = None,
) -> dict:
    """The cascade on `model` (shared with the explainer that `compute(method)` uses); returns the
    correlations per step and the verdicts. `originals` are the trained model's maps; with `foreground`
    ((N, H, W) bool) the background-aware correlations and verdicts too."""
    layers = weighted_layers(model)
    points = cascade(len(layers), steps)
    saved = [np.array(w) for w in model.get_weights()]
    rng = np.random.default_rng([seed, 17])
    rows = []
    try:
        done = 0
        top_down = layers[::-1]
        for k in points:
            for _, layer in top_down[done:k]:
                randomize(layer, rng)
            done = k
            maps = {m: compute(m) for m in methods}
            corr = {m: float(np.mean(spearman(originals[m], maps[m]))) for m in methods}
            row = {"randomized": k, "down_to": top_down[k - 1][0], "spearman": corr}
            if foreground is not None:
                row["spearman_foreground"] = {
                    m: _nanmean(spearman_within(originals[m], maps[m], foreground)) for m in methods
                }
            rows.append(row)
    finally:
        model.set_weights(saved)
    final = rows[-1]["spearman"] if rows else {}
    verdict = {m: {"final_spearman": final.get(m), "passes": abs(final.get(m, 1.0)) < PASS_BELOW} for m in methods}
    if foreground is not None and rows:
        fg = rows[-1]["spearman_foreground"]
        for m in methods:
            value = fg.get(m)
            verdict[m]["final_spearman_foreground"] = value
            verdict[m]["passes_foreground"] = value is not None and abs(value) < PASS_BELOW
    return {
        "layers_with_weights": len(layers),
        "randomization": "permutation of each weight tensor, top down",
        "pass_below": PASS_BELOW,
        "steps": rows,
        "methods": verdict,
        "foreground": None if foreground is None else "pixels that differ from black (by 1 % of the range)",
    }


def _nanmean(a: np.ndarray) -> float | None:
    a = a[np.isfinite(a)]
    return float(a.mean()) if len(a) else None
