"""Images a finished run adds to its TensorBoard log (RUN/logs/results): the confusion matrix and a
grid of the most confident mistakes, beside the scalars Keras logs while training."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from keras_digits.reporting.predictions import load_npz


def mistakes_grid(ex: dict, names: Sequence[str], columns: int = 6):
    """A matplotlib figure: the most confident mistakes with true/predicted labels, or None."""
    from keras_digits.reporting.plots import plain, pyplot

    n = int(ex["mistakes"])
    if n == 0:
        return None
    plt = pyplot()
    rows = -(-n // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(1.6 * columns, 1.9 * rows), squeeze=False)
    for i, ax in enumerate(axes.ravel()):
        ax.axis("off")
        if i >= n:
            continue
        img = ex["images"][i]
        ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray" if img.shape[-1] == 1 else None)
        pred = int(np.argmax(ex["probs"][i]))
        true, guess = plain(str(names[int(ex["y"][i])])[:10]), plain(str(names[pred])[:10])
        ax.set_title(f"{true}→{guess}\n{ex['probs'][i][pred]:.2f}", fontsize=7)
    fig.tight_layout()
    return fig


def log_result_images(run_dir: str | Path, split: str, names: Sequence[str], step: int = 0) -> None:
    """Write the confusion matrix and the mistakes grid of `split` as TensorBoard images."""
    import tensorflow as tf

    from keras_digits.reporting.html import figure_png
    from keras_digits.reporting.plots import plot_confusion_figure
    from keras_digits.utils.io import read_json_object

    run_dir = Path(run_dir)
    metrics = read_json_object(run_dir / "metrics.json", lenient=True).get(split) or {}
    figures = {}
    if metrics.get("confusion_matrix"):
        figures[f"confusion_matrix/{split}"] = plot_confusion_figure(np.asarray(metrics["confusion_matrix"]), names)
    ex = load_npz(run_dir / f"examples-{split}.npz")
    if ex is not None and (fig := mistakes_grid(ex, names)) is not None:
        figures[f"most_confident_mistakes/{split}"] = fig
    writer = tf.summary.create_file_writer(str(run_dir / "logs" / "results"))
    with writer.as_default():
        for tag, fig in figures.items():
            image = tf.io.decode_png(figure_png(fig), channels=4)[None]
            tf.summary.image(tag, image, step=step)
    writer.close()
