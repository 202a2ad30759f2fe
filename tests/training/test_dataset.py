"""Dataset indexing, series/patient split, slice cache and patch pairs on the real CT series."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch

from sr_engine.intensity import mapping_for, modality_values
from sr_engine.metrics import degrade
from training.dataset_index import index_dicom_trees, patient_key, split_records
from training.patches import PatchPairs
from training.slice_cache import build_cache


def test_index_groups_series_sorted_and_filtered(shared_dir: Path) -> None:
    recs = index_dicom_trees([shared_dir / "data"], modalities=["CT"])
    by_slices = sorted(r.n_slices for r in recs if r.n_slices > 5)
    assert by_slices == [24, 28, 30]  # the three CT series, nothing from mr/ or misc MR
    assert all(r.modality == "CT" for r in recs)
    for rec in recs:
        if rec.n_slices < 5:
            continue
        pos = []
        for f in rec.files:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
            iop = np.asarray(ds.ImageOrientationPatient, float)
            pos.append(float(np.dot(np.cross(iop[:3], iop[3:]), np.asarray(ds.ImagePositionPatient, float))))
        assert pos == sorted(pos), rec.description  # slice order along the normal (GE is tilted)
    assert not index_dicom_trees([shared_dir / "data" / "mr"], modalities=["CT"])
    assert len(index_dicom_trees([shared_dir / "data" / "mr"], modalities=["MR"])) == 1
    assert index_dicom_trees([shared_dir / "data" / "mr"], modalities=["MR"], min_size=512) == []


def test_summary_has_no_patient_identifiers(ct_dirs: list[Path]) -> None:
    recs = index_dicom_trees(ct_dirs)
    for rec in recs:
        pid = str(pydicom.dcmread(rec.files[0], stop_before_pixels=True).PatientID)
        assert pid not in repr(rec) and pid not in str(rec.summary())
        assert rec.patient_key == patient_key(pid)


@pytest.mark.parametrize("by", ["patient", "series"])
def test_split_never_splits_a_group(ct_dirs: list[Path], by: str) -> None:
    recs = index_dicom_trees(ct_dirs)
    parts = split_records(recs, by=by, fractions=(1, 1, 1), seed=3)
    assert sorted(len(v) for v in parts.values()) == [1, 1, 1]
    seen = [r.series_uid for v in parts.values() for r in v]
    assert sorted(seen) == sorted(r.series_uid for r in recs)
    keys = [{(r.patient_key if by == "patient" else r.series_uid) for r in v} for v in parts.values()]
    assert not (keys[0] & keys[1]) and not (keys[1] & keys[2]) and not (keys[0] & keys[2])
    assert split_records(recs, by=by, fractions=(1, 1, 1), seed=3) == parts  # deterministic
    with pytest.raises(ValueError, match="split by"):
        split_records(recs, by="slice")


def test_slice_cache_is_float_hu_memmap_and_reused(ct_by_name: dict[str, Path], tmp_path: Path) -> None:
    recs = index_dicom_trees([ct_by_name["ge"]])
    (cached,) = build_cache(recs, tmp_path, progress=False)
    vol = cached.volume()
    assert isinstance(vol, np.memmap) and vol.dtype == np.float32 and vol.shape == (28, 512, 512)
    expect = modality_values(pydicom.dcmread(recs[0].files[5]))
    np.testing.assert_array_equal(vol[5], expect)
    assert vol.min() < -1024  # signed GE series: values below the CT mapping's floor stay float HU
    mtime = cached.path.stat().st_mtime_ns
    build_cache(recs, tmp_path, progress=False)
    assert cached.path.stat().st_mtime_ns == mtime  # not decoded again
    cached.path.unlink()
    build_cache(recs, tmp_path, progress=False)
    assert cached.path.exists()  # a missing file is rebuilt


def test_patch_pairs_deterministic_and_lr_is_the_engine_operator(ct_by_name: dict[str, Path],
                                                                 tmp_path: Path) -> None:
    cached = build_cache(index_dicom_trees([ct_by_name["cptac"]]), tmp_path, progress=False)
    mapping = mapping_for("CT")
    ds = PatchPairs(cached, mapping, scale=4, hr_patch=64, length=10, seed=7, augment=False)
    lr, hr = ds[3]
    assert lr.shape == (1, 16, 16) and hr.shape == (1, 64, 64) and lr.dtype == torch.float32
    lr2, hr2 = ds[3]
    assert torch.equal(lr, lr2) and torch.equal(hr, hr2)
    assert not torch.equal(ds[4][1], hr)
    assert float(hr.std()) >= 0.01  # flat air patches are resampled
    hu = mapping.from_unit(hr.double())
    expect = mapping.to_unit(degrade(hu[None], 4)[0].float())
    # hr is clipped to [0, 1]; where the patch has no HU outside the range the LR is exact.
    if float(hu.min()) > -1024 and float(hu.max()) < 3071:
        torch.testing.assert_close(lr, expect, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="multiple"):
        PatchPairs(cached, mapping, scale=4, hr_patch=30, length=1)
