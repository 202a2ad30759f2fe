"""Float modality values → stored integers for the derived object's header.

The derived object keeps the source's RescaleSlope/Intercept, so its values mean the same units
(HU for CT); it is always 16-bit so upscaling overshoot beyond the source's BitsStored survives.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset


@dataclass(frozen=True)
class StoredPixels:
    """Integer pixels plus the Image Pixel attributes that describe them."""

    array: np.ndarray
    pixel_representation: int  # 0 unsigned, 1 signed
    slope: float
    intercept: float

    @property
    def bits(self) -> int:
        return 16


def to_stored_pixels(values: np.ndarray, source: Dataset, unsigned_only: bool = False) -> StoredPixels:
    """Quantise float modality values with the source's rescale; clip to 16 bits of its signedness.

    `unsigned_only` (JPEG 2000 lossless encodes unsigned samples only): a signed source is shifted
    by 32768 with the intercept moved to match, so every value is still exact.
    """
    slope = float(getattr(source, "RescaleSlope", 1.0) or 1.0)
    intercept = float(getattr(source, "RescaleIntercept", 0.0) or 0.0)
    signed = int(getattr(source, "PixelRepresentation", 0)) == 1
    if signed and unsigned_only:
        signed = False
        intercept -= 32768.0 * slope
    info = np.iinfo(np.int16 if signed else np.uint16)
    stored = np.rint((np.asarray(values, dtype=np.float64) - intercept) / slope)
    stored = np.clip(stored, info.min, info.max).astype(np.int16 if signed else np.uint16)
    return StoredPixels(stored, 1 if signed else 0, slope, intercept)
