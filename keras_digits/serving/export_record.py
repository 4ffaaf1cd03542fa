"""What assets/export.json and the export command say about each written format: its input contract
(what the caller applies), its size on disk, and one printed line about its check."""

from __future__ import annotations

from pathlib import Path
from typing import Any

SAVED_MODEL_WHERE = "saved_model.pb + variables/"


def input_notes(kind: str, shape: tuple[int, ...], preprocess: str) -> dict[str, Any]:
    """Whether a format fits images itself, and what the caller applies otherwise."""
    h, w, c = shape
    if kind == "saved_model":
        return {
            "fits_images_itself": True,
            "digit_normalisation": "in the graph" if preprocess == "digit" else "none",
        }
    caller = [
        f"fit images to {h}x{w}x{c} uint8: channels (RGB to grey with ITU-R 601 weights, grey to RGB by "
        "repetition, alpha dropped) and an antialiased bilinear resize rounded to the uint8 grid "
        "(keras_digits.data.adapt.fit_to_model)"
    ]
    if preprocess == "digit":
        caller.insert(0, "the MNIST-style digit normalisation (keras_digits.data.digit_norm), first")
    return {"fits_images_itself": False, "caller_applies": caller}


def size_of(path: Path) -> int:
    """Bytes of a model file, or of a SavedModel's graph and variables."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in (path / "variables").rglob("*") if p.is_file()) + sum(
        p.stat().st_size for p in path.glob("*.pb")
    )


def describe(name: str, rec: dict[str, Any]) -> str:
    """One line about an exported format and its check."""
    check = rec.get("check", {})
    where = rec.get("file", SAVED_MODEL_WHERE)
    size = f"{rec.get('bytes', 0) / 2**20:.2f} MiB"
    if "keras_accuracy" in check:
        result = (
            f"test accuracy {check['keras_accuracy']:.4f} -> {check['accuracy']:.4f} "
            f"({100 * check['change']:+.2f} points on {check['images']} images)"
        )
    else:
        result = (
            f"max |diff| {check.get('max_abs_diff', float('nan')):.1e} <= {check.get('tolerance', 0):g} "
            f"on {check.get('images', 0)} images"
        )
    return f"{name:<14} {where:<27} {size:>10}  {rec.get('runtime', '')}, fresh process: {result}  ok"
