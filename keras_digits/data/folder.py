"""A class-per-subfolder tree of image files of any size (e.g. street-number photos)."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np

from keras_digits.data.base import DatasetSpec, RawSplits, validate_arrays
from keras_digits.errors import KerasDigitsError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
DEFAULT_FOLDER_SIZE = 28


def read_image(path: Path, size: int | None, mode: str | None = None) -> np.ndarray:
    """Decode one image file to uint8 (H, W, C), optionally resized to size x size. Raises OSError/ValueError."""
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        if mode is None:
            mode = "L" if im.mode in ("1", "L", "LA", "I;16", "I") else "RGB"
        im = im.convert(mode)
        if size is not None and im.size != (size, size):
            im = im.resize((size, size), Image.BILINEAR)
        arr = np.asarray(im, dtype=np.uint8)
    return arr[..., None] if arr.ndim == 2 else arr


def list_images(root: Path) -> tuple[list[Path], list[Path]]:
    """Files under root with an image extension, and the other files (skipped)."""
    images, others = [], []
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.name.startswith("."):
            (images if p.suffix.lower() in IMAGE_EXTENSIONS else others).append(p)
    return images, others


def load_folder(spec: DatasetSpec, data_dir: Path | None, image_size: int | None = None) -> RawSplits:
    """Read TREE/<class>/<image>; classes sorted by name; bad files skipped with a warning naming them."""
    if data_dir is None:
        raise KerasDigitsError("folder: pass --data-dir TREE, a folder with one subfolder of images per class")
    classes = sorted(p.name for p in data_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) < 2:
        raise KerasDigitsError(f"folder: {data_dir} needs at least two class subfolders, found {len(classes)}")
    size = image_size or DEFAULT_FOLDER_SIZE
    per_class: dict[str, list[Path]] = {}
    skipped: list[str] = []
    for name in classes:
        images, others = list_images(data_dir / name)
        skipped += [f"{p} (not an image file)" for p in others]
        per_class[name] = images
    # decide channels: grey only if every readable image is grey
    from PIL import Image

    modes = set()
    readable: dict[str, list[Path]] = {}
    for name, paths in per_class.items():
        readable[name] = []
        for p in paths:
            try:
                with Image.open(p) as im:
                    im.verify()
                    modes.add("L" if im.mode in ("1", "L", "LA", "I;16", "I") else "RGB")
                readable[name].append(p)
            except Exception as exc:  # PIL raises many types for corrupt files
                skipped.append(f"{p} (unreadable: {type(exc).__name__})")
    mode = "L" if modes == {"L"} else "RGB"
    xs, ys = [], []
    for label, name in enumerate(classes):
        count = 0
        for p in readable[name]:
            try:
                xs.append(read_image(p, size, mode))
            except Exception as exc:
                skipped.append(f"{p} (unreadable: {type(exc).__name__})")
                continue
            ys.append(label)
            count += 1
        if count == 0:
            raise KerasDigitsError(f"folder: class {name!r} ({data_dir / name}) has no readable images")
    for item in skipped:
        warnings.warn(f"skipped {item}", stacklevel=2)
    if skipped:
        print(f"warning: skipped {len(skipped)} file(s) in {data_dir}: " + "; ".join(skipped[:5])
              + (" ..." if len(skipped) > 5 else ""), file=sys.stderr)
    x, y = validate_arrays(spec.name, "all", np.stack(xs), np.asarray(ys), len(classes))
    return RawSplits(train=(x, y), test=None, source=str(data_dir), label_names=tuple(classes))
