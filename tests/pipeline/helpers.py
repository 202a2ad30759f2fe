"""Helpers for the end-to-end tests: send a series from Orthanc, wait for the derived one, check it."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pydicom
import yaml

from dicom_node.derive.uids import derived_series_uid
from sr_engine.registry import builtin_digest
from tests.orthanc import Orthanc
from tests.pipeline.dicom_checks import new_errors


def write_config(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


def expected_derived_uid(source: Path, scale: int = 2) -> str:
    ds = pydicom.dcmread(source, stop_before_pixels=True)
    return derived_series_uid(ds.SeriesInstanceUID, "bicubic", builtin_digest("bicubic"), scale)


def forward(orthanc: Orthanc, files: list[Path]) -> None:
    """Orthanc stores the files, then C-STOREs the series to the node (modality `srnode`)."""
    series_id = orthanc.upload(files)
    orthanc.post("/modalities/srnode/store", {"Resources": [series_id], "Synchronous": True})


def orthanc_instances(orthanc: Orthanc, series_uid: str) -> list[dict]:
    found = [x for x in orthanc.post("/tools/lookup", series_uid.encode()) if x["Type"] == "Series"]
    if not found:
        return []
    return orthanc.get(f"/series/{found[0]['ID']}/instances")


def wait_for_series(orthanc: Orthanc, series_uid: str, count: int, timeout_s: float) -> list[dict]:
    deadline = time.monotonic() + timeout_s
    instances: list[dict] = []
    while time.monotonic() < deadline:
        instances = orthanc_instances(orthanc, series_uid)
        if len(instances) >= count:
            return instances
        time.sleep(0.5)
    raise AssertionError(f"derived series {series_uid} has {len(instances)} of {count} instances in Orthanc")


def check_derived_in_orthanc(orthanc: Orthanc, sources: list[Path], series_uid: str, tmp: Path, scale: int = 2) -> None:
    """Every derived instance in Orthanc: right geometry, HU preserved, no new dciodvfy error."""
    by_sop = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID: f for f in sources}
    instances = orthanc_instances(orthanc, series_uid)
    assert len(instances) == len(sources)
    for inst in instances:
        out = tmp / f"{inst['ID']}.dcm"
        out.write_bytes(_raw(orthanc, f"/instances/{inst['ID']}/file"))
        ds = pydicom.dcmread(out)
        src_path = by_sop[ds.SourceImageSequence[0].ReferencedSOPInstanceUID]
        src = pydicom.dcmread(src_path)
        assert (ds.Rows, ds.Columns) == (src.Rows * scale, src.Columns * scale)
        assert np.allclose(np.array(ds.PixelSpacing, float), np.array(src.PixelSpacing, float) / scale, rtol=1e-5)
        assert list(map(float, ds.ImageOrientationPatient)) == list(map(float, src.ImageOrientationPatient))
        shift = np.array(src.ImagePositionPatient, float) - np.array(ds.ImagePositionPatient, float)
        # Moved by spacing·(s−1)/(2s) in-plane only: the slice position along the normal is unchanged.
        normal = np.cross(np.array(src.ImageOrientationPatient[:3], float),
                          np.array(src.ImageOrientationPatient[3:], float))
        assert abs(float(shift @ normal)) < 1e-3 and np.linalg.norm(shift) > 0
        assert ds.Modality == src.Modality and ds.SOPClassUID == src.SOPClassUID
        assert list(ds.ImageType[:2]) == ["DERIVED", "SECONDARY"]
        assert new_errors(out, src_path) == set()


def _raw(orthanc: Orthanc, path: str) -> bytes:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{orthanc.http_port}{path}", timeout=30) as r:
        return r.read()
