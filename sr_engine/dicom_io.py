"""Find image instances under folders and group them into series (for `srnode sr`/`evaluate`)."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

log = logging.getLogger(__name__)


@dataclass
class SeriesFiles:
    """The image files of one series, in slice order."""

    series_uid: str
    modality: str
    files: list[Path] = field(default_factory=list)


def _slice_key(ds: Dataset) -> tuple[float, float]:
    pos = getattr(ds, "ImagePositionPatient", None)
    z = float(pos[2]) if pos is not None and len(pos) == 3 else 0.0
    return (float(getattr(ds, "InstanceNumber", 0) or 0), z)


def find_image_series(dirs: list[Path]) -> list[SeriesFiles]:
    """Every image instance (has Pixel Data, not RGB) under `dirs`, grouped by series, ordered."""
    series: dict[str, SeriesFiles] = {}
    keys: dict[Path, tuple[float, float]] = {}
    for root in dirs:
        paths = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for path in paths:
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True)
            except (InvalidDicomError, OSError, ValueError) as exc:
                log.info("skipping %s: not a readable DICOM file (%s)", path, type(exc).__name__)
                continue
            if "PixelData" not in ds and not hasattr(ds, "Rows"):
                log.info("skipping %s: no image (SOP class %s)", path, getattr(ds, "SOPClassUID", "?"))
                continue
            if int(getattr(ds, "SamplesPerPixel", 1)) != 1:
                log.info("skipping %s: %s samples per pixel, only grey images are upscaled", path, ds.SamplesPerPixel)
                continue
            uid = str(getattr(ds, "SeriesInstanceUID", "unknown"))
            entry = series.setdefault(uid, SeriesFiles(uid, str(getattr(ds, "Modality", ""))))
            entry.files.append(path)
            keys[path] = _slice_key(ds)
    for entry in series.values():
        entry.files.sort(key=lambda p: keys[p])
    return list(series.values())
