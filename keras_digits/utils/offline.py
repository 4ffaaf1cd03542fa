"""The one offline switch: `KERAS_DIGITS_OFFLINE=1` turns off every download (datasets and weights)."""

from __future__ import annotations

import os

OFFLINE_ENV = "KERAS_DIGITS_OFFLINE"


def offline() -> bool:
    """True when downloads are switched off ($KERAS_DIGITS_OFFLINE=1)."""
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in ("1", "true", "yes", "on")
