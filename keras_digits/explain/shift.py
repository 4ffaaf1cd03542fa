"""Explanations under shift: do they stay faithful as accuracy drops? (`evaluate --perturb/--dataset --explain M`.)

For each scoring (the clean data first, then each corruption and severity, or another dataset), a fixed
subset of `n` images (the first n of a seed-0 permutation, the same images every time) is explained with
one method for the model's predicted class, and two numbers are recorded beside the accuracy:

* deletion AUC (explain.faithfulness: pixels set to black in the map's order, target probability; lower is
  better), next to a random map's on the same images;
* ink relevance mass (explain.localisation) when the images are light digits on black: the share of the
  map's positive relevance on the digit's ink. The ink is taken from the clean images when the geometry
  is unchanged (no digit normalisation, no rotation or shift), so noise, blur or low contrast do not move
  the ground truth; else from each corrupted image itself.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from keras_digits.errors import KerasDigitsError


def scorer(method: str, n: int = 100, seed: int = 0, batch_size: int = 64) -> Callable:
    """hook(model, fitted images, same_geometry) -> {"method", "n", "deletion_auc", ...} for one scoring."""
    from keras_digits.explain import method_fn, parse_methods

    names = parse_methods(method)
    if len(names) != 1:
        raise KerasDigitsError(f"--explain takes one method, got {method!r}")
    name = names[0]
    state: dict = {}

    def hook(model, images: np.ndarray, same_geometry: bool = True) -> dict:
        from keras_digits.explain import faithfulness, localisation
        from keras_digits.explain.core import Explainer, Options

        if state.get("model") is not model:
            state.update(model=model, ex=Explainer(model, None, Options(batch_size=batch_size, seed=seed)))
            state.pop("ink", None)
            state.pop("idx", None)
        ex = state["ex"]
        if ex.layer is None and name in ("gradcam", "gradcampp", "layercam", "scorecam", "guided_gradcam"):
            ex.require_layer(name)
        if "idx" not in state:
            state["idx"] = np.sort(np.random.default_rng(0).permutation(len(images))[: min(n, len(images))])
        idx = state["idx"]
        x = np.asarray(images[idx], np.float32)
        t = ex.predict(x).argmax(axis=1).astype(np.int32)
        c = np.full(len(x), -1, np.int32)
        maps = method_fn(name)(ex, x, t, c)
        rand = faithfulness.random_maps(len(x), x.shape[1:3], seed)
        d, _ = faithfulness.curves(ex, x, t, c, maps, seed=seed)
        dr, _ = faithfulness.curves(ex, x, t, c, rand, seed=seed)
        out = {
            "method": name,
            "n": int(len(x)),
            "deletion_auc": float(faithfulness.auc(d).mean()),
            "deletion_auc_random": float(faithfulness.auc(dr).mean()),
        }
        if "ink" not in state:  # the first call is the clean data
            clean = localisation.dark_background(x, ex.low, ex.high)
            state["ink"] = localisation.ink_mask(x, ex.low, ex.high) if clean else None
        if state["ink"] is not None:
            ink = state["ink"] if same_geometry else localisation.ink_mask(x, ex.low, ex.high)
            mass = localisation.relevance_mass(maps, ink)
            out["ink_relevance"] = float(np.nanmean(mass)) if np.isfinite(mass).any() else None
            out["ink_fraction"] = float(ink.mean())
        return out

    return hook
