"""WADO-RS rendered: one frame as an 8-bit display image (PNG or JPEG), windowed.

Display only (PS3.18 8.3.5.1.3 "rendered"): modality LUT (rescale), then a linear VOI window given
by the request (`window=center,width[,function]`), a named preset, or the dataset's first
WindowCenter/WindowWidth, else the frame's own range; MONOCHROME1 is inverted.
"""
from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut

# Named windows (center, width) in modality units; an srnode convenience (`preset=lung`).
PRESETS: dict[str, tuple[float, float]] = {
    "lung": (-600.0, 1500.0),
    "mediastinum": (50.0, 350.0),
    "abdomen": (40.0, 400.0),
    "liver": (60.0, 160.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
}
MEDIA_TYPES = {"image/jpeg": "JPEG", "image/png": "PNG"}
MAX_VIEWPORT = 4096


class RenderError(ValueError):
    """A rendering request the node cannot satisfy (the message says which parameter)."""


@dataclass(frozen=True)
class Window:
    center: float
    width: float
    function: str = "LINEAR"  # LINEAR, LINEAR_EXACT or SIGMOID (PS3.3 C.11.2.1.2)


def parse_window(text: str | None, preset: str | None) -> Window | None:
    """The window a request asks for (None: the dataset's own), from `window=` or `preset=`."""
    if text:
        fields = [f.strip() for f in text.split(",")]
        try:
            center, width = float(fields[0]), float(fields[1])
        except (IndexError, ValueError):
            raise RenderError("window must be center,width[,function]") from None
        function = fields[2].upper() if len(fields) > 2 and fields[2] else "LINEAR"
        if function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
            raise RenderError("window function must be linear, linear_exact or sigmoid")
        if width <= 0 or (width < 1 and function == "LINEAR"):
            raise RenderError("window width must be positive (at least 1 for linear)")
        return Window(center, width, function)
    if preset:
        if preset.lower() not in PRESETS:
            raise RenderError(f"preset must be one of {', '.join(sorted(PRESETS))}")
        return Window(*PRESETS[preset.lower()])
    return None


def parse_viewport(text: str | None) -> tuple[int, int] | None:
    """`viewport=columns,rows` (the output size), or None to keep the frame's size."""
    if not text:
        return None
    try:
        cols, rows = (int(v) for v in text.split(",")[:2])
    except ValueError:
        raise RenderError("viewport must be columns,rows") from None
    if not (0 < cols <= MAX_VIEWPORT and 0 < rows <= MAX_VIEWPORT):
        raise RenderError(f"viewport sizes must be 1..{MAX_VIEWPORT}")
    return cols, rows


def _first(value: object) -> float | None:
    if value is None or value == "":
        return None
    try:
        first = (value[0] if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue"  # type: ignore[index]
                 else value)
        return float(first)  # type: ignore[arg-type]
    except (TypeError, ValueError, IndexError):
        return None


def _windowed(values: np.ndarray, window: Window) -> np.ndarray:
    c, w = window.center, window.width
    if window.function == "SIGMOID":
        out = 255.0 / (1.0 + np.exp(-4.0 * (values - c) / w))
    elif window.function == "LINEAR_EXACT":
        out = ((values - c) / w + 0.5) * 255.0
    else:
        out = ((values - (c - 0.5)) / (w - 1) + 0.5) * 255.0
    return np.clip(out, 0, 255).astype(np.uint8)


def frame_image(ds: Dataset, frame: int, window: Window | None) -> np.ndarray:
    """Frame `frame` (1-based) as uint8, rows × columns (grey) or rows × columns × 3 (colour)."""
    frames = int(ds.get("NumberOfFrames") or 1)
    if not 1 <= frame <= frames:
        raise RenderError(f"frame {frame} does not exist (the instance has {frames})")
    pixels = ds.pixel_array
    if frames > 1:
        pixels = pixels[frame - 1]
    photometric = str(ds.get("PhotometricInterpretation", "")).upper()
    if pixels.ndim == 3:  # colour: scale to 8 bits, no VOI
        bits = int(ds.get("BitsStored") or 8)
        return (pixels.astype(np.float64) * (255.0 / (2 ** bits - 1))).clip(0, 255).astype(np.uint8)
    values = np.asarray(apply_modality_lut(pixels, ds), dtype=np.float64)
    if window is None:
        center, width = _first(ds.get("WindowCenter")), _first(ds.get("WindowWidth"))
        if center is not None and width is not None and width >= 1:
            window = Window(center, width)
        else:
            low, high = float(values.min()), float(values.max())
            window = Window((low + high) / 2, max(high - low, 1.0), "LINEAR_EXACT")
    image = _windowed(values, window)
    return 255 - image if photometric == "MONOCHROME1" else image


def encode(image: np.ndarray, media_type: str, quality: int = 90,
           viewport: tuple[int, int] | None = None) -> bytes:
    """PNG or JPEG bytes of an 8-bit image, resized to `viewport` (columns, rows) if given."""
    from PIL import Image  # Pillow comes with matplotlib, a dependency already

    picture = Image.fromarray(image)
    if viewport is not None:
        picture = picture.resize(viewport, Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    if MEDIA_TYPES[media_type] == "JPEG":
        picture.save(buf, "JPEG", quality=max(1, min(100, quality)))
    else:
        picture.save(buf, "PNG")
    return buf.getvalue()
