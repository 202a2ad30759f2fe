"""Values read from a parsed header: the Instance columns, the slice position, presence of pixel data.

Lenient by design (a value that cannot be read is empty or None): refusing is `validate`'s job.
"""
from __future__ import annotations

import math
from datetime import datetime
from pathlib import PurePosixPath
from typing import Any

from pydicom.dataset import Dataset

PIXEL_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)  # PixelData, FloatPixelData, DoubleFloatPixelData


def _text(ds: Dataset, keyword: str, limit: int) -> str:
    value = ds.get(keyword)
    if value is None:
        return ""
    if not isinstance(value, (str, bytes)) and hasattr(value, "__iter__") and not hasattr(value, "family_name"):
        text = "\\".join(str(v) for v in value)
    else:
        text = str(value)
    # PostgreSQL refuses NUL in text; columns have fixed widths.
    return text.replace("\x00", "").strip()[:limit]


def _int(ds: Dataset, keyword: str) -> int | None:
    try:
        value = ds.get(keyword)
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _floats(ds: Dataset, keyword: str, n: int) -> list[float] | None:
    try:
        value = ds.get(keyword)
        if value is None:
            return None
        out = [float(v) for v in value]
        return out if len(out) == n and all(math.isfinite(v) for v in out) else None
    except (TypeError, ValueError):
        return None


def slice_position(ds: Dataset) -> float | None:
    """Position (mm) along the slice normal, from IPP and IOP; SliceLocation as fallback."""
    ipp = _floats(ds, "ImagePositionPatient", 3)
    iop = _floats(ds, "ImageOrientationPatient", 6)
    if ipp and iop:
        r, c = iop[:3], iop[3:]
        n = (r[1] * c[2] - r[2] * c[1], r[2] * c[0] - r[0] * c[2], r[0] * c[1] - r[1] * c[0])
        return float(sum(a * b for a, b in zip(ipp, n)))
    try:
        loc = ds.get("SliceLocation")
        return float(loc) if loc not in (None, "") else None
    except (TypeError, ValueError):
        return None


def has_pixel_data(ds: Dataset) -> bool:
    """True if the dataset carries any kind of pixel data element."""
    return any(tag in ds for tag in PIXEL_TAGS)


def instance_values(ds_header: Dataset, rel_path: str | PurePosixPath, file_size: int, transfer_syntax: str,
                    sender_ae: str, now: datetime, is_image: bool | None = None) -> dict[str, Any]:
    """The Instance columns taken from one header (everything but keys and series_pk)."""
    ipp = _floats(ds_header, "ImagePositionPatient", 3)
    iop = _floats(ds_header, "ImageOrientationPatient", 6)
    spacing = _floats(ds_header, "PixelSpacing", 2)
    return {
        "sop_class_uid": _text(ds_header, "SOPClassUID", 64),
        "instance_number": _int(ds_header, "InstanceNumber"),
        "transfer_syntax_uid": str(transfer_syntax)[:64],
        "file_path": str(rel_path),
        "file_size": int(file_size),
        "rows": _int(ds_header, "Rows"),
        "columns": _int(ds_header, "Columns"),
        "number_of_frames": _int(ds_header, "NumberOfFrames"),
        "slice_location": slice_position(ds_header),
        "image_position": "\\".join(f"{v:g}" for v in ipp)[:128] if ipp else "",
        "image_orientation": "\\".join(f"{v:g}" for v in iop)[:256] if iop else "",
        "pixel_spacing": "\\".join(f"{v:g}" for v in spacing)[:64] if spacing else "",
        "is_image": has_pixel_data(ds_header) if is_image is None else is_image,
        "received_at": now,
        "sender_ae": (sender_ae or "").strip()[:16],
    }
