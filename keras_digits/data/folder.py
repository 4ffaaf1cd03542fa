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


def to_uint8_range(values: np.ndarray, mode: str, extrema: tuple[float, float] | None = None) -> np.ndarray:
    """Scale a 16-bit, 32-bit integer or float grey image into 0..255 (uint8) without clipping it.

    Integers by their nominal range, the same for every image of a dataset: 16-bit (and PIL's 32-bit
    "I", which holds 16-bit data) as x * 255 / 65535, as scikit-image's img_as_ubyte does. Floats
    have no nominal range: within 0..1 they are x * 255, otherwise stretched from their minimum to their
    maximum (a constant image maps to 0); `extrema` is the whole image's (min, max) when `values` is a part."""
    x = np.nan_to_num(np.asarray(values, dtype=np.float64), nan=0.0)
    if mode == "F":
        lo, hi = extrema if extrema is not None else _float_extrema(x)
        if lo >= 0 and hi <= 1:
            x = x * 255.0
        else:
            x = (x - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(x)
    else:
        x = x * (255.0 / 65535.0)
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def _float_extrema(x: np.ndarray) -> tuple[float, float]:
    x = np.nan_to_num(np.asarray(x, dtype=np.float64), nan=0.0)
    return float(x.min(initial=0.0)), float(x.max(initial=0.0))


MAX_SIDE = 2048  # images are reduced while decoded to at most this many pixels on their long side
MAX_DECODE_BYTES = 256 * 2**20  # Pillow's buffer for one full-size decoded image (8192 x 8192 RGB): a larger
# non-JPEG image is refused with one line, which keeps predict's peak memory, TensorFlow included, under 1 GiB
STRIP_BYTES = 16 * 2**20  # rows converted and reduced at a time
JPEG_FORMATS = ("JPEG", "MPO")  # decoded by libjpeg, which can scale while decoding (`draft`)


class ImageTooLarge(ValueError):
    """An image too large to decode within MAX_DECODE_BYTES (or refused by Pillow's decompression-bomb guard)."""


def _pixel_bytes(mode: str) -> int:
    """Bytes Pillow stores one pixel of `mode` in (RGB is padded to 4)."""
    return 1 if mode in ("1", "L", "P") else 2 if mode.startswith("I;16") else 4


def has_alpha(im) -> bool:
    """Whether a PIL image has transparency: an alpha band or a transparent colour/palette entry."""
    return im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info


def _reduction(size: tuple[int, int]) -> int:
    """The integer factor that brings the long side of `size` to at most MAX_SIDE."""
    return max(1, -(-max(size) // MAX_SIDE))


def _open_image(path: Path):
    """Image.open with Pillow's decompression-bomb guard as ImageTooLarge (its warning is dropped: large
    images are reduced here)."""
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(path)
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(f"{exc}; refused") from None


def _check_decode_size(im, full: tuple[int, int]) -> None:
    """Refuse an image whose decode needs more than MAX_DECODE_BYTES: its (drafted) pixels, or for a
    progressive JPEG libjpeg's 16-bit coefficients of the whole `full`-size image, whatever the scaling."""
    w, h = im.size
    need = w * h * _pixel_bytes(im.mode)
    if im.format in JPEG_FORMATS and im.info.get("progressive"):
        need = max(need, full[0] * full[1] * 2 * len(im.getbands()))
        w, h = full
    if need > MAX_DECODE_BYTES:
        raise ImageTooLarge(
            f"{w} x {h} {im.mode} image needs {need / 2**20:,.0f} MiB to decode, more than the "
            f"{MAX_DECODE_BYTES // 2**20} MiB allowed; downscale it first"
        )


def _converted(piece, mode: str, alpha: bool, extrema: tuple[float, float] | None):
    """One piece of the image in `mode` (L or RGB), or premultiplied RGBa when it has transparency."""
    from PIL import Image

    if alpha:
        return piece.convert("RGBA").convert("RGBa")
    if piece.mode in WIDE_MODES:
        piece = Image.fromarray(to_uint8_range(np.asarray(piece), piece.mode, extrema), "L")
    return piece.convert(mode)


def _composite(premultiplied: np.ndarray, mode: str, notes: list[str] | None) -> np.ndarray:
    """Premultiplied RGBa (H, W, 4) onto its background, as uint8 (H, W) for L or (H, W, 3) for RGB."""
    from PIL import Image

    rgb, a = premultiplied[..., :3].astype(np.float32), premultiplied[..., 3].astype(np.float32)
    cover = float(a.sum(dtype=np.float64)) / 255.0
    if cover == 0:
        if notes is not None:
            notes.append("fully transparent: read as a blank (black) image")
        background = 0.0
    else:  # the visible pixels' mean luminance decides: dark content goes on white, light content on black
        luma = float((rgb @ np.asarray((0.299, 0.587, 0.114), np.float32)).sum(dtype=np.float64)) / cover
        background = 255.0 if luma < 128 else 0.0
    out = np.clip(np.rint(rgb + np.float32(background) * (1 - a / 255)[..., None]), 0, 255).astype(np.uint8)
    return np.asarray(Image.fromarray(out, "RGB").convert(mode), np.uint8)


def read_image(path: Path, size: int | None, mode: str | None = None, notes: list[str] | None = None) -> np.ndarray:
    """Decode one image file to uint8 (H, W, C), optionally resized to size x size. Raises OSError/ValueError.

    Grey files (and 16-bit, 32-bit and float ones, scaled into 0..255 by `to_uint8_range`, never clipped)
    give one channel, others RGB, unless `mode` (L or RGB) says. Memory stays bounded: an image longer than
    MAX_SIDE px is reduced while it is decoded to at most MAX_SIDE on its long side (JPEG by the decoder's
    DCT scaling, `draft`; others by box-averaging, `Image.reduce`, a strip of rows at a time); one whose
    full-size decode needs more than MAX_DECODE_BYTES, or that Pillow's decompression-bomb guard refuses
    (over 2 x Image.MAX_IMAGE_PIXELS), raises ImageTooLarge. Transparency: a transparent pixel is
    background. The image is composited onto white when its visible pixels are dark on average (alpha-
    weighted mean luminance under 128), onto black otherwise, so hidden colour under alpha 0 never shows
    and the ink stays visible either way; a fully transparent image reads as blank (black) and adds a line
    to `notes`."""
    from PIL import Image

    with _open_image(path) as im:
        if mode is None:
            mode = "L" if im.mode in GREY_MODES else "RGB"
        full = im.size
        factor = _reduction(full)
        if factor > 1 and im.format in JPEG_FORMATS:
            im.draft(None, (-(-im.size[0] // factor), -(-im.size[1] // factor)))
        _check_decode_size(im, full)
        im.load()
        alpha = has_alpha(im) and im.mode not in WIDE_MODES  # a 16-bit grey tRNS is rare; scaled, not composited
        factor = _reduction(im.size)
        w, h = im.size
        if factor == 1:
            out = np.asarray(_converted(im, mode, alpha, None), np.uint8)
        else:
            extrema = None
            rows = factor * max(1, STRIP_BYTES // (w * 8 * factor))
            if im.mode == "F":
                parts = [_float_extrema(np.asarray(im.crop((0, y, w, min(h, y + rows))))) for y in range(0, h, rows)]
                extrema = (min(p[0] for p in parts), max(p[1] for p in parts))
            out = None
            for y in range(0, h, rows):
                part = np.asarray(
                    _converted(im.crop((0, y, w, min(h, y + rows))), mode, alpha, extrema).reduce(factor), np.uint8
                )
                if out is None:
                    out = np.empty((-(-h // factor), *part.shape[1:]), np.uint8)
                out[y // factor : y // factor + len(part)] = part
    if alpha:
        out = _composite(out, mode, notes)
    if size is not None and out.shape[:2] != (size, size):
        out = np.asarray(Image.fromarray(out).resize((size, size), Image.BILINEAR), np.uint8)
    return out[..., None] if out.ndim == 2 else out


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
            if not name.startswith(".") and (p.is_file() or p.is_symlink()):  # a broken link is named, not dropped
                (images if p.suffix.lower() in IMAGE_EXTENSIONS else others).append(p)
    return sorted(images), sorted(others)


def check_class_name(name: str, root: Path) -> None:
    """Refuse a class folder name that cannot be one line of labels.txt or a CSV cell."""
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise KerasDigitsError(
            f"folder: class folder {name!r} in {root} holds a line break or control character; "
            "rename it (label names are written one per line)"
        )


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
            print(
                f"warning: class {name!r} has subfolders ({', '.join(nested[:3])}"
                f"{' ...' if len(nested) > 3 else ''}); their images count as class {name!r}",
                file=sys.stderr,
            )
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
        print(
            f"warning: skipped {len(skipped)} file(s) in {data_dir}: "
            + "; ".join(skipped[:5])
            + (" ..." if len(skipped) > 5 else ""),
            file=sys.stderr,
        )
    x, y = validate_arrays(spec.name, "all", np.stack(xs), np.asarray(ys), len(classes))
    return RawSplits(train=(x, y), test=None, source=str(data_dir), label_names=tuple(classes))


def check_folder_memory(n_images: int, size: int, root: Path) -> None:
    """Refuse a tree that cannot be held in memory at --image-size (uint8, RGB at most)."""
    import psutil

    needed = n_images * size * size * 3
    available = psutil.virtual_memory().available
    if needed > available * 0.8:
        raise KerasDigitsError(
            f"folder: {n_images:,} images of {root} at --image-size {size} need about "
            f"{needed / 2**30:,.1f} GiB; {available / 2**30:.1f} GiB are free: lower --image-size"
        )
