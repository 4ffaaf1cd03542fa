"""A class-per-subfolder tree of image files of any size (e.g. street-number photos)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

from keras_digits.data.base import DatasetSpec, RawSplits, validate_arrays
from keras_digits.errors import KerasDigitsError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
DEFAULT_FOLDER_SIZE = 28


GREY_MODES = ("1", "L", "LA", "I", "F", "I;16", "I;16L", "I;16B", "I;16N")  # PIL modes read as one channel
WIDE_MODES = ("I", "F", "I;16", "I;16L", "I;16B", "I;16N")  # more than 8 bits a pixel


def to_uint8_range(values: np.ndarray, mode: str) -> np.ndarray:
    """Scale a 16-bit, 32-bit integer or float grey image into 0..255 (uint8) without clipping it.

    Integers by their nominal range, the same for every image of a dataset: 16-bit (and PIL's 32-bit
    "I", which holds 16-bit data) as x * 255 / 65535, as scikit-image's img_as_ubyte does. Floats
    have no nominal range: within 0..1 they are x * 255, otherwise stretched from their minimum to their
    maximum (a constant image maps to 0)."""
    x = np.nan_to_num(np.asarray(values, dtype=np.float64), nan=0.0)
    if mode == "F":
        lo, hi = float(x.min(initial=0.0)), float(x.max(initial=0.0))
        if lo >= 0 and hi <= 1:
            x = x * 255.0
        else:
            x = (x - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(x)
    else:
        x = x * (255.0 / 65535.0)
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def read_image(path: Path, size: int | None, mode: str | None = None) -> np.ndarray:
    """Decode one image file to uint8 (H, W, C), optionally resized to size x size; 16-bit and float
    images are scaled into 0..255 (`to_uint8_range`), never clipped. Raises OSError/ValueError."""
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        if mode is None:
            mode = "L" if im.mode in GREY_MODES else "RGB"
        if im.mode in WIDE_MODES:
            im = Image.fromarray(to_uint8_range(np.asarray(im), im.mode), "L")
        im = im.convert(mode)
        if size is not None and im.size != (size, size):
            im = im.resize((size, size), Image.BILINEAR)
        arr = np.asarray(im, dtype=np.uint8)
    return arr[..., None] if arr.ndim == 2 else arr


def list_images(root: Path, unreadable: list[str] | None = None) -> tuple[list[Path], list[Path]]:
    """Files under root with an image extension, and the other files (skipped); hidden files and
    folders are ignored. A folder that cannot be read is added to `unreadable` (or raises when None)."""
    images, others = [], []

    def failed(exc: OSError) -> None:
        if unreadable is None:
            raise exc
        unreadable.append(f"{exc.filename} (unreadable folder: {exc.strerror or type(exc).__name__})")

    for folder, dirs, files in os.walk(root, onerror=failed):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            p = Path(folder) / name
            if not name.startswith(".") and p.is_file():
                (images if p.suffix.lower() in IMAGE_EXTENSIONS else others).append(p)
    return sorted(images), sorted(others)


def check_class_name(name: str, root: Path) -> None:
    """Refuse a class folder name that cannot be one line of labels.txt or a CSV cell."""
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise KerasDigitsError(f"folder: class folder {name!r} in {root} holds a line break or control character; "
                               "rename it (label names are written one per line)")


def load_folder(spec: DatasetSpec, data_dir: Path | None, image_size: int | None = None) -> RawSplits:
    """Read TREE/<class>/<image>; classes sorted by name; bad files skipped with a warning naming them."""
    if data_dir is None:
        raise KerasDigitsError("folder: pass --data-dir TREE, a folder with one subfolder of images per class")
    if not data_dir.is_dir():
        raise KerasDigitsError(f"folder: {data_dir} is not a folder")
    classes = sorted(p.name for p in data_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) < 2:
        raise KerasDigitsError(f"folder: {data_dir} needs at least two class subfolders, found {len(classes)}")
    for name in classes:
        check_class_name(name, data_dir)
    size = image_size or DEFAULT_FOLDER_SIZE
    per_class: dict[str, list[Path]] = {}
    skipped: list[str] = []
    for name in classes:
        images, others = list_images(data_dir / name, unreadable=skipped)
        skipped += [f"{p} (not an image file)" for p in others]
        nested = sorted({p.relative_to(data_dir / name).parts[0] for p in images if p.parent != data_dir / name})
        if nested:
            print(f"warning: class {name!r} has subfolders ({', '.join(nested[:3])}"
                  f"{' ...' if len(nested) > 3 else ''}); their images count as class {name!r}", file=sys.stderr)
        per_class[name] = images
    check_folder_memory(sum(len(v) for v in per_class.values()), size, data_dir)
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
                    modes.add("L" if im.mode in GREY_MODES else "RGB")
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
    if skipped:
        print(f"warning: skipped {len(skipped)} file(s) in {data_dir}: " + "; ".join(skipped[:5])
              + (" ..." if len(skipped) > 5 else ""), file=sys.stderr)
    x, y = validate_arrays(spec.name, "all", np.stack(xs), np.asarray(ys), len(classes))
    return RawSplits(train=(x, y), test=None, source=str(data_dir), label_names=tuple(classes))


def check_folder_memory(n_images: int, size: int, root: Path) -> None:
    """Refuse a tree that cannot be held in memory at --image-size (uint8, RGB at most)."""
    import psutil

    needed = n_images * size * size * 3
    available = psutil.virtual_memory().available
    if needed > available * 0.8:
        raise KerasDigitsError(f"folder: {n_images:,} images of {root} at --image-size {size} need about "
                               f"{needed / 2**30:,.1f} GiB; {available / 2**30:.1f} GiB are free: lower --image-size")
