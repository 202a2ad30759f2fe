"""Server-side rendering of one slice to PNG for the console viewer.

The pixel data stay float modality values (HU for CT) up to this point; the window is applied
here for display only and never written back anywhere.
"""
from __future__ import annotations

import io
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

# Display defaults when the object carries no WindowCenter/Width: a soft-tissue CT window.
CT_DEFAULT_WINDOW = (40.0, 400.0)


def _first(value: object) -> float:
    # WindowCenter/Width may be multi-valued (several presets); the first is the default.
    from pydicom.multival import MultiValue

    return float(value[0] if isinstance(value, MultiValue) else value)  # type: ignore[arg-type]


@lru_cache(maxsize=6)
def _values(path: str, mtime_ns: int) -> tuple[np.ndarray, str, tuple[float, float] | None]:
    from pydicom import dcmread

    from sr_engine.intensity import modality_values

    ds = dcmread(path)
    values = modality_values(ds)
    if values.ndim == 2:
        values = values[None]
    window = None
    if "WindowCenter" in ds and "WindowWidth" in ds:
        window = (_first(ds.WindowCenter), _first(ds.WindowWidth))
    values.setflags(write=False)
    return values, str(ds.get("Modality", "")), window


def load_values(path: Path) -> tuple[np.ndarray, str, tuple[float, float] | None]:
    """Float32 modality values [F, H, W] of a stored instance, its modality and stored window (cached)."""
    return _values(str(path), path.stat().st_mtime_ns)


def default_window(values: np.ndarray, modality: str, stored: tuple[float, float] | None) -> tuple[float, float]:
    """The object's own window, else a CT soft-tissue window, else the 1-99th percentile range."""
    if stored is not None and stored[1] > 0:
        return stored
    if modality.upper() == "CT":
        return CT_DEFAULT_WINDOW
    lo, hi = np.percentile(values, [1, 99])
    return float((lo + hi) / 2), float(max(hi - lo, 1e-6))


def window_png(values: np.ndarray, center: float, width: float) -> bytes:
    """One 2-D float slice → 8-bit grey PNG through the window (display only)."""
    width = max(float(width), 1e-6)
    low = center - width / 2
    grey = np.clip((values.astype(np.float32) - low) / width, 0.0, 1.0)
    img = Image.fromarray(np.round(grey * 255).astype(np.uint8), mode="L")
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()
