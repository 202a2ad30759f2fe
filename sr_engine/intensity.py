"""Stored pixel values <-> modality values <-> model input [0, 1], in float end to end.

CT default: HU clipped to [-1024, 3071] maps linearly to [0, 1].  MR/CR/DX default: a robust
per-series percentile range.  Never a display window (Window Center/Width are ignored).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch
from pydicom.dataset import Dataset

from sr_engine.model_entry import IntensityConfig

CT_RANGE: tuple[float, float] = (-1024.0, 3071.0)
_FIXED_MODALITIES = {"CT"}

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)


def _frame_count(ds: Dataset) -> int:
    return int(getattr(ds, "NumberOfFrames", 1) or 1)


def rescale_per_frame(ds: Dataset) -> list[tuple[float, float]]:
    """(slope, intercept) for every frame: per-frame functional groups, shared ones, or the top level."""
    n = _frame_count(ds)
    shared = None
    if "SharedFunctionalGroupsSequence" in ds:
        item = ds.SharedFunctionalGroupsSequence[0]
        if "PixelValueTransformationSequence" in item:
            pvt = item.PixelValueTransformationSequence[0]
            shared = (float(pvt.RescaleSlope), float(pvt.RescaleIntercept))
    top = (float(getattr(ds, "RescaleSlope", 1.0) or 1.0), float(getattr(ds, "RescaleIntercept", 0.0) or 0.0))
    result = []
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    for i in range(n):
        value = shared or top
        if per_frame is not None and i < len(per_frame) and "PixelValueTransformationSequence" in per_frame[i]:
            pvt = per_frame[i].PixelValueTransformationSequence[0]
            value = (float(pvt.RescaleSlope), float(pvt.RescaleIntercept))
        result.append(value)
    return result


def _modality_lut(ds: Dataset) -> tuple[np.ndarray, int] | None:
    """(LUT values, first mapped stored value) when the dataset has a Modality LUT Sequence."""
    if "ModalityLUTSequence" not in ds:
        return None
    item = ds.ModalityLUTSequence[0]
    n_entries, first, bits = (int(v) for v in item.LUTDescriptor)
    n_entries = n_entries or 65536
    data = item.LUTData
    if isinstance(data, (bytes, bytearray)):
        lut = np.frombuffer(data, dtype=np.uint16 if bits > 8 else np.uint8)
    else:
        lut = np.asarray(data)
    return lut[:n_entries].astype(np.float32), first


def modality_values(ds: Dataset) -> np.ndarray:
    """Modality values (HU for CT) as float32: [H, W], or [F, H, W] for multi-frame."""
    if not any(ds.get(k) for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        # pydicom would fail with "object of type 'NoneType' has no len()"; say what is wrong.
        raise ValueError("the instance has no pixel data (PixelData absent or empty)")
    stored = ds.pixel_array
    lut = _modality_lut(ds)
    if lut is not None:
        table, first = lut
        idx = np.clip(stored.astype(np.int64) - first, 0, len(table) - 1)
        return table[idx].astype(np.float32)
    params = rescale_per_frame(ds)
    values = stored.astype(np.float64)
    if values.ndim == 2:
        slope, intercept = params[0]
        return (values * slope + intercept).astype(np.float32)
    for i, (slope, intercept) in enumerate(params[: values.shape[0]]):
        values[i] = values[i] * slope + intercept
    return values.astype(np.float32)


def stored_range(ds: Dataset) -> tuple[int, int]:
    """The smallest and largest stored value that BitsStored and PixelRepresentation allow."""
    bits = int(ds.BitsStored)
    if int(getattr(ds, "PixelRepresentation", 0)) == 1:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def _stored_dtype(ds: Dataset) -> np.dtype:
    signed = int(getattr(ds, "PixelRepresentation", 0)) == 1
    bits = int(ds.BitsAllocated)
    kind = {8: "int8", 16: "int16", 32: "int32"}[bits]
    return np.dtype(kind if signed else "u" + kind)


def to_stored(values: np.ndarray, ds: Dataset) -> np.ndarray:
    """Modality values -> stored values of `ds`'s encoding: inverse rescale/LUT, round, clip to BitsStored."""
    values = np.asarray(values, dtype=np.float64)
    lo, hi = stored_range(ds)
    lut = _modality_lut(ds)
    if lut is not None:
        table, first = lut
        # Nearest LUT entry; Modality LUTs are monotonic in practice.
        order = np.argsort(table, kind="stable")
        pos = np.clip(np.searchsorted(table[order], values), 1, len(table) - 1)
        left, right = table[order][pos - 1], table[order][pos]
        pick = np.where(np.abs(values - left) <= np.abs(values - right), pos - 1, pos)
        stored = order[pick].astype(np.float64) + first
    else:
        params = rescale_per_frame(ds)
        if values.ndim == 2:
            slope, intercept = params[0]
            stored = (values - intercept) / slope
        else:
            stored = np.empty_like(values)
            for i in range(values.shape[0]):
                slope, intercept = params[min(i, len(params) - 1)]
                stored[i] = (values[i] - intercept) / slope
    return np.clip(np.rint(stored), lo, hi).astype(_stored_dtype(ds))


@dataclass(frozen=True)
class IntensityMapping:
    """Linear map of modality values [low, high] onto the model's [0, 1] (clipped)."""

    low: float
    high: float

    def __post_init__(self) -> None:
        if not self.high > self.low:
            raise ValueError(f"intensity range must have high > low, got [{self.low}, {self.high}]")

    def to_unit(self, values: ArrayT) -> ArrayT:
        """Modality values -> model input in [0, 1]."""
        unit = (values - self.low) / (self.high - self.low)
        return unit.clamp(0, 1) if isinstance(unit, torch.Tensor) else np.clip(unit, 0, 1).astype(np.float32)

    def from_unit(self, unit: ArrayT) -> ArrayT:
        """Model output in [0, 1] -> modality values."""
        values = unit * (self.high - self.low) + self.low
        return values if isinstance(values, torch.Tensor) else np.asarray(values, dtype=np.float32)


CT_MAPPING = IntensityMapping(*CT_RANGE)


def mapping_for(
    modality: str | None, values: np.ndarray | None = None, config: IntensityConfig | None = None
) -> IntensityMapping:
    """The mapping for a series: the config if given, else fixed HU for CT, else per-series percentiles."""
    if config is None:
        fixed = (modality or "").upper() in _FIXED_MODALITIES
        config = IntensityConfig() if fixed else IntensityConfig(mode="percentile")
    if config.mode == "fixed":
        return IntensityMapping(config.low, config.high)
    if values is None:
        raise ValueError(f"percentile intensity mapping for modality {modality!r} needs the series' values")
    finite = np.asarray(values, dtype=np.float64)
    lo, hi = np.percentile(finite, [config.percentile_low, config.percentile_high])
    if not hi > lo:  # a flat series: any non-empty range keeps it flat and invertible
        hi = lo + 1.0
    return IntensityMapping(float(lo), float(hi))
