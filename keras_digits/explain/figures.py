"""The explanation grid: one row per image (true/predicted label, confidence, target), one column for
the input and one per method, each map overlaid on the image as a heat map.

Display only: each map is shown as its absolute value stretched between its own 1st and 99th
percentiles (so one hot pixel does not wash out the rest, and RISE's constant offset does not either),
in the "inferno" colour map at 60% over the grey image. The raw signed maps are in the .npy files.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


def display_map(m: np.ndarray) -> np.ndarray:
    """|m| stretched from its 1st to its 99th percentile onto 0..1 (clipped); a constant map is all 0."""
    a = np.abs(np.asarray(m, np.float64))
    low, top = np.percentile(a, [1, 99])
    return np.clip((a - low) / (top - low), 0.0, 1.0) if top > low else np.zeros_like(a)


def grey(img: np.ndarray) -> np.ndarray:
    """uint8 (H, W, C) -> float (H, W, 3) in 0..1 for display."""
    x = np.asarray(img, np.float64) / 255.0
    return np.repeat(x, 3, axis=-1) if x.shape[-1] == 1 else x[..., :3]


def grid_figure(images: np.ndarray, maps: dict[str, np.ndarray], row_labels: Sequence[str], title: str = ""):
    """A matplotlib figure of the grid."""
    from keras_digits.reporting.plots import plain, pyplot

    plt = pyplot()
    cmap = plt.get_cmap("inferno")
    n, cols = len(images), 1 + len(maps)
    cell = 1.35
    fig, axes = plt.subplots(n, cols, figsize=(cols * cell, n * cell + 0.5), squeeze=False)
    for r in range(n):
        base = grey(images[r])
        axes[r, 0].imshow(base, interpolation="nearest")
        axes[r, 0].set_ylabel(plain(row_labels[r]), fontsize=7, rotation=0, ha="right", va="center", labelpad=4)
        for j, m in enumerate(maps.values(), start=1):
            heat = cmap(display_map(m[r]))[..., :3]
            axes[r, j].imshow(0.4 * base + 0.6 * heat, interpolation="nearest")
    for j, name in enumerate(["input", *maps], start=0):
        axes[0, j].set_title(plain(name), fontsize=8)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    top = 1.0 - 0.45 / (n * cell + 0.5)
    if title:
        fig.suptitle(plain(title), fontsize=9, y=0.999)
    fig.tight_layout(pad=0.3, h_pad=0.2, w_pad=0.2, rect=(0, 0, 1, top))
    return fig


def save_grid(
    path: str | Path, images: np.ndarray, maps: dict[str, np.ndarray], row_labels: Sequence[str], title: str = ""
) -> None:
    from keras_digits.reporting.plots import pyplot
    from keras_digits.utils.io import save_figure

    fig = grid_figure(images, maps, row_labels, title)
    save_figure(fig, path)
    pyplot().close(fig)
