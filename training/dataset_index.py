"""Index DICOM folder trees into series records and split them by patient or series.

Splitting happens on whole series (or whole patients), never on slices: neighbouring slices of one
series are nearly identical, so a slice-level split would leak the test set into training.
"""
from __future__ import annotations

import hashlib
import logging
import random
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

log = logging.getLogger(__name__)

# Header fields read while indexing (pixel data is decoded later, once, by the slice cache).
_HEADER_TAGS = [
    "SOPClassUID", "Modality", "Rows", "Columns", "PatientID", "StudyInstanceUID",
    "SeriesInstanceUID", "SeriesDescription", "InstanceNumber", "ImagePositionPatient",
    "ImageOrientationPatient", "PixelSpacing", "NumberOfFrames",
]


@dataclass(frozen=True)
class SeriesRecord:
    """One image series found on disk, with its files in slice order."""

    series_uid: str
    study_uid: str
    # A one-way hash of PatientID: enough to group and split, never a readable identifier.
    patient_key: str
    modality: str
    rows: int
    columns: int
    description: str
    files: tuple[Path, ...] = field(repr=False)

    @property
    def n_slices(self) -> int:
        """Number of single-frame slices in the series."""
        return len(self.files)

    @property
    def cache_key(self) -> str:
        """Stable file-system-safe key for this series' slice cache."""
        return hashlib.sha256(self.series_uid.encode()).hexdigest()[:16]

    def summary(self) -> dict[str, object]:
        """A loggable description (no patient data)."""
        return {
            "series_key": self.cache_key, "modality": self.modality, "rows": self.rows,
            "columns": self.columns, "slices": self.n_slices, "description": self.description,
        }


def patient_key(patient_id: str) -> str:
    """Hash a PatientID so records can be grouped without carrying the identifier."""
    return hashlib.sha256(patient_id.encode()).hexdigest()[:12]


def _slice_position(ds: pydicom.Dataset) -> float | None:
    # Distance along the slice normal: correct for tilted gantries, unlike raw z.
    ipp, iop = ds.get("ImagePositionPatient"), ds.get("ImageOrientationPatient")
    if ipp is None or iop is None or len(ipp) != 3 or len(iop) != 6:
        return None
    row, col = np.asarray(iop[:3], float), np.asarray(iop[3:], float)
    return float(np.dot(np.cross(row, col), np.asarray(ipp, float)))


def _iter_files(roots: Iterable[Path]) -> Iterable[Path]:
    for root in roots:
        root = Path(root)
        if root.is_file():
            yield root
        elif root.is_dir():
            yield from sorted(p for p in root.rglob("*") if p.is_file())
        else:
            raise FileNotFoundError(f"data path not found: {root}")


def index_dicom_trees(
    roots: Sequence[Path | str],
    modalities: Sequence[str] = ("CT",),
    min_size: int = 64,
    min_slices: int = 1,
) -> list[SeriesRecord]:
    """Find every single-frame image series under `roots`, filtered by modality and size."""
    wanted = {m.upper() for m in modalities}
    groups: dict[str, list[tuple[float, int, Path, pydicom.Dataset]]] = defaultdict(list)
    skipped = 0
    for path in _iter_files(Path(r) for r in roots):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_HEADER_TAGS)
        except (InvalidDicomError, OSError, ValueError):
            skipped += 1
            continue
        if "Rows" not in ds or "SeriesInstanceUID" not in ds:
            skipped += 1
            continue
        if str(ds.get("Modality", "")).upper() not in wanted:
            continue
        if int(ds.get("NumberOfFrames", 1) or 1) != 1:
            # Multi-frame objects need their own reader; single-frame CT/MR is the norm here.
            skipped += 1
            continue
        pos = _slice_position(ds)
        inst = int(ds.get("InstanceNumber", 0) or 0)
        groups[str(ds.SeriesInstanceUID)].append((pos if pos is not None else float(inst), inst, path, ds))
    if skipped:
        log.info("indexing skipped %d non-image or unreadable files", skipped)

    records: list[SeriesRecord] = []
    for uid, items in groups.items():
        items.sort(key=lambda t: (t[0], t[1]))
        first = items[0][3]
        rows, cols = int(first.Rows), int(first.Columns)
        # A series mixing matrix sizes (e.g. a localizer) keeps only its dominant size.
        sizes = [(int(d.Rows), int(d.Columns)) for _, _, _, d in items]
        rows, cols = max(set(sizes), key=sizes.count)
        files = tuple(p for (_, _, p, d), s in zip(items, sizes) if s == (rows, cols))
        if min(rows, cols) < min_size or len(files) < min_slices:
            continue
        records.append(SeriesRecord(
            series_uid=uid,
            study_uid=str(first.get("StudyInstanceUID", "")),
            patient_key=patient_key(str(first.get("PatientID", "") or uid)),
            modality=str(first.Modality).upper(),
            rows=rows, columns=cols,
            description=str(first.get("SeriesDescription", "")),
            files=files,
        ))
    records.sort(key=lambda r: r.series_uid)
    return records


def split_records(
    records: Sequence[SeriesRecord],
    by: str = "patient",
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    seed: int = 0,
) -> dict[str, list[SeriesRecord]]:
    """Split series into train/val/test by patient or by series (never by slice)."""
    if by not in ("patient", "series"):
        raise ValueError(f"split by must be 'patient' or 'series', not {by!r}")
    if any(f < 0 for f in fractions) or sum(fractions) <= 0:
        raise ValueError(f"split fractions must be non-negative and not all zero: {fractions}")
    groups: dict[str, list[SeriesRecord]] = defaultdict(list)
    for rec in records:
        groups[rec.patient_key if by == "patient" else rec.series_uid].append(rec)
    keys = sorted(groups)
    random.Random(seed).shuffle(keys)
    total = sum(fractions)
    n = len(keys)
    n_val = round(n * fractions[1] / total)
    n_test = round(n * fractions[2] / total)
    # Every non-zero share gets at least one group when there are enough groups to go round.
    if fractions[1] > 0 and n_val == 0 and n >= 3:
        n_val = 1
    if fractions[2] > 0 and n_test == 0 and n >= 3:
        n_test = 1
    n_train = max(n - n_val - n_test, 0)
    parts = {
        "train": keys[:n_train],
        "val": keys[n_train:n_train + n_val],
        "test": keys[n_train + n_val:],
    }
    return {name: [r for k in ks for r in groups[k]] for name, ks in parts.items()}
