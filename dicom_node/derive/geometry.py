"""In-plane geometry of an upscaled slice: more, smaller pixels over the same field of view."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def scaled_pixel_spacing(pixel_spacing: Sequence[float], scale: int) -> list[float]:
    """PixelSpacing (row, column) of the upscaled image: each spacing divided by `scale`."""
    return [float(pixel_spacing[0]) / scale, float(pixel_spacing[1]) / scale]


def scaled_image_position(
    position: Sequence[float], orientation: Sequence[float], pixel_spacing: Sequence[float], scale: int
) -> list[float]:
    """ImagePositionPatient of the upscaled image: the centre of its new first pixel.

    The source's first pixel covers ±spacing/2 around `position`; the upscaled first pixel is the
    top-left sub-pixel of that area (pixel-centre aligned resampling), so it moves by
    spacing·(scale−1)/(2·scale) against the row and column directions. Orientation is unchanged.
    """
    ipp = np.asarray(position, dtype=float)
    row_dir = np.asarray(orientation[:3], dtype=float)  # direction of increasing column index
    col_dir = np.asarray(orientation[3:6], dtype=float)  # direction of increasing row index
    shrink = (scale - 1) / (2.0 * scale)
    moved = ipp - row_dir * float(pixel_spacing[1]) * shrink - col_dir * float(pixel_spacing[0]) * shrink
    return [float(v) for v in moved]
