"""Decode each series once into a float32 memory-mapped volume (modality units, HU for CT).

Epochs then read patches straight from the .npy files through np.memmap instead of re-decoding
DICOM. The cache is keyed by series and checked against its manifest, so a stale or partial file
is rebuilt rather than trusted.
"""
from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from tqdm import tqdm

from sr_engine.intensity import modality_values
from training.dataset_index import SeriesRecord

log = logging.getLogger(__name__)

_MANIFEST = "manifest.json"


@dataclass(frozen=True)
class CachedSeries:
    """A series' slices as a read-only (n, rows, cols) float32 memmap."""

    record: SeriesRecord
    path: Path

    def volume(self) -> np.ndarray:
        """Open the volume memory-mapped (no copy into RAM)."""
        return np.load(self.path, mmap_mode="r")


def _manifest_entry(rec: SeriesRecord) -> dict[str, object]:
    return {"n": rec.n_slices, "rows": rec.rows, "columns": rec.columns,
            "files": [str(p) for p in rec.files]}


def _write_volume(rec: SeriesRecord, dest: Path) -> None:
    tmp = dest.with_suffix(".tmp.npy")
    vol = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32,
                                    shape=(rec.n_slices, rec.rows, rec.columns))
    for i, path in enumerate(rec.files):
        ds = pydicom.dcmread(path)
        vol[i] = modality_values(ds).astype(np.float32, copy=False)
    vol.flush()
    del vol
    os.replace(tmp, dest)  # atomic: a crash never leaves a half-written cache behind


def build_cache(records: Sequence[SeriesRecord], cache_dir: Path | str,
                progress: bool = True) -> list[CachedSeries]:
    """Decode every series not yet cached (or changed) and return handles to all of them."""
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    manifest_path = cache_dir / _MANIFEST
    manifest: dict[str, dict[str, object]] = (
        json.loads(manifest_path.read_text()) if manifest_path.exists() else {})
    out: list[CachedSeries] = []
    todo = [r for r in records
            if manifest.get(r.cache_key) != _manifest_entry(r)
            or not (cache_dir / f"{r.cache_key}.npy").exists()]
    for rec in tqdm(todo, desc="decode series", unit="series", disable=not progress or not todo):
        _write_volume(rec, cache_dir / f"{rec.cache_key}.npy")
        manifest[rec.cache_key] = _manifest_entry(rec)
        tmp = manifest_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(manifest, indent=1))
        os.replace(tmp, manifest_path)
    if todo:
        log.info("slice cache: decoded %d series into %s", len(todo), cache_dir)
    for rec in records:
        out.append(CachedSeries(rec, cache_dir / f"{rec.cache_key}.npy"))
    return out
