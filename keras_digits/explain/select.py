"""Which images to explain and for which class: from a split (the first n, n per class, or the most
confident mistakes) or from image files; targets `pred`, `true` or a class, and an optional contrast."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from keras_digits.errors import KerasDigitsError


@dataclass
class Selection:
    x: np.ndarray  # uint8 (N, H, W, C)
    labels: np.ndarray  # true class per image, -1 when unknown (files)
    names: list[str]  # "test #12" or the file path
    how: str  # in words, for explain.json
    indices: list[int] | None = None  # positions in the split
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    notes: list[tuple[str, str]] = field(default_factory=list)  # (file, note) for files read noteworthily
    inkless: int = 0  # files without ink for the digit normalisation (only grey-scaled and resized)


SPLIT_MODES = ("first", "per_class", "errors")


def from_split(
    x: np.ndarray,
    y: np.ndarray,
    split: str,
    n: int,
    mode: str,
    probs: Callable[[np.ndarray], np.ndarray],
    num_classes: int,
) -> Selection:
    """`n` images of a split: mode "first", the first n; "per_class", the first n of each class (class
    order); "errors", the n misclassified images with the highest predicted probability."""
    if mode not in SPLIT_MODES:
        raise ValueError(f"mode must be one of {SPLIT_MODES}, got {mode!r}")
    y = np.asarray(y).astype(int)
    if mode == "per_class":
        idx = []
        for k in range(num_classes):
            found = np.flatnonzero(y == k)[:n]
            if len(found) < n:
                raise KerasDigitsError(
                    f"--n {n} --per-class: class {k} has only {len(found)} image(s) in the {split} split"
                )
            idx += found.tolist()
        how = f"first {n} of each class of the {split} split"
    elif mode == "errors":
        p = probs(x)
        pred = p.argmax(axis=1)
        wrong = np.flatnonzero(pred != y)
        if len(wrong) == 0:
            raise KerasDigitsError(f"--errors: the model makes no mistake on the {split} split ({len(y)} images)")
        order = wrong[np.argsort(-p[wrong, pred[wrong]], kind="stable")]
        idx = order[:n].tolist()
        how = f"the {len(idx)} most confident mistakes of {len(wrong)} on the {split} split"
    else:
        if n > len(y):
            raise KerasDigitsError(f"--n {n} is larger than the {split} split ({len(y)} images)")
        idx = list(range(n))
        how = f"first {n} of the {split} split"
    return Selection(x[idx], y[idx], [f"{split} #{i}" for i in idx], how, indices=idx)


def fit_for_model(
    images: Sequence[np.ndarray], shape: tuple[int, int, int], digit: bool = False
) -> tuple[np.ndarray, int]:
    """Decoded images of any sizes -> (uint8 (N, *shape), images without ink), exactly as predict feeds an
    exported model: digit-normalised first when `digit`, then the serving signature's channel conversion
    and resize (keras_digits.data.adapt.fit_to_model). Same-size images share a call."""
    from keras_digits.data.adapt import fit_array

    out = np.zeros((len(images), *shape), np.uint8)
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, im in enumerate(images):
        groups.setdefault(im.shape, []).append(i)
    inkless = 0
    for idx in groups.values():
        fitted, none = fit_array(np.stack([images[i] for i in idx]), shape, digit)
        out[idx] = fitted
        inkless += none
    return out, inkless


def from_files(
    paths: Sequence[str], shape: tuple[int, int, int], limit: int | None = None, digit: bool = False
) -> Selection:
    """Images named by files or folders, read and fitted to the model as `predict` does (`fit_for_model`;
    `digit`: with --preprocess digit); unreadable files are skipped."""
    from keras_digits.data.folder import read_image
    from keras_digits.serving.predictor import _reason, find_images

    files, skipped = find_images(paths)
    images, names, notes = [], [], []
    bad = [(str(p), why) for p, why in skipped]
    for f in files:
        said: list[str] = []
        try:
            images.append(read_image(f, None, None, said))
            names.append(str(f))
        except (OSError, ValueError, SyntaxError) as exc:  # Pillow's errors for non-images and broken files
            bad.append((str(f), _reason(exc)))
        notes += [(str(f), note) for note in said]
        if limit is not None and len(images) >= limit:
            break
    if not images:
        raise KerasDigitsError(
            f"no readable image among {', '.join(paths)}" + (f" ({bad[0][0]}: {bad[0][1]})" if bad else "")
        )
    x, inkless = fit_for_model(images, shape, digit)
    how = f"{len(x)} image file(s)" + (", digit-normalised" if digit else "")
    return Selection(x, np.full(len(x), -1), names, how, skipped=bad, notes=notes, inkless=inkless)


def parse_class(text: str, label_names: Sequence[str], what: str) -> int:
    """A class given as its label name or its index; a name wins, with a note when it is also another index."""
    names = [str(n) for n in label_names]
    if text in names:
        k = names.index(text)
        if text.isdigit() and int(text) != k and int(text) < len(names):
            print(
                f"note: {what} {text} is read as the class named {text!r} (index {k}), not as index {text} "
                f"(class {names[int(text)]!r})",
                file=sys.stderr,
            )
        return k
    try:
        k = int(text)
    except ValueError:
        k = -1
    if 0 <= k < len(names):
        return k
    raise KerasDigitsError(
        f"{what} {text!r} is not a class; classes: "
        + ", ".join(f"{i} ({n})" if str(i) != n else n for i, n in enumerate(names))
    )


def targets(
    spec: str, contrast: str | None, sel: Selection, preds: np.ndarray, label_names: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """(target, contrast) class per image; contrast -1 when none."""
    if spec == "pred":
        t = np.asarray(preds, np.int32)
    elif spec == "true":
        if (sel.labels < 0).any():
            raise KerasDigitsError(
                "--target true needs images from a split (files have no true label); use --target pred or a class"
            )
        t = sel.labels.astype(np.int32)
    else:
        t = np.full(len(sel.x), parse_class(spec, label_names, "--target"), np.int32)
    c = np.full(len(sel.x), -1, np.int32)
    if contrast is not None:
        k = parse_class(contrast, label_names, "--contrast")
        if (t == k).all():
            raise KerasDigitsError(f"--contrast {contrast} is the target class itself; contrast it with another class")
        c[:] = k
        c[t == k] = -1  # an image whose target is the contrast class is explained plainly
    return t, c
