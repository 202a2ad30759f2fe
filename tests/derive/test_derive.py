"""The highdicom writer: geometry, values, UIDs, references and dciodvfy on real CT and MR."""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch

from dicom_node.derive.uids import derived_series_uid, derived_sop_uid
from dicom_node.derive.writer import Derivation, derive_classic, derive_enhanced, encode
from tests.pipeline.dicom_checks import modality_values, new_errors

torch.set_num_threads(1)


def upscale(values: np.ndarray, scale: int) -> np.ndarray:
    t = torch.from_numpy(values.astype(np.float32))[None, None]
    up = torch.nn.functional.interpolate(t, scale_factor=scale, mode="bicubic", align_corners=False)
    return up[0, 0].double().numpy()


def first_slices(folder: Path, n: int = 2) -> list[tuple[Path, pydicom.Dataset]]:
    files = sorted(folder.glob("*.dcm"))[:n]
    return [(f, pydicom.dcmread(f)) for f in files]


def test_uids_are_deterministic_and_distinct() -> None:
    a = derived_series_uid("1.2.3", "bicubic", "ab" * 32, 2)
    assert a == derived_series_uid("1.2.3", "bicubic", "AB" * 32, 2)
    assert len({a, derived_series_uid("1.2.3", "bicubic", "ab" * 32, 4),
                derived_series_uid("1.2.3", "lanczos", "ab" * 32, 2),
                derived_series_uid("1.2.4", "bicubic", "ab" * 32, 2),
                derived_sop_uid("1.2.3", "bicubic", "ab" * 32, 2)}) == 5
    assert len(a) <= 64


@pytest.mark.parametrize("scale", [2, 3])
def test_geometry_and_values(ct_dirs: list[Path], scale: int) -> None:
    _, src = first_slices(ct_dirs[0], 1)[0]
    hu = modality_values(src)
    up = upscale(hu, scale)
    ds = derive_classic(src, up, Derivation(model="bicubic", checkpoint_sha256="", scale=scale))
    assert (ds.Rows, ds.Columns) == (src.Rows * scale, src.Columns * scale)
    assert np.allclose([float(v) for v in ds.PixelSpacing], [float(v) / scale for v in src.PixelSpacing], rtol=1e-6)
    assert list(ds.ImageOrientationPatient) == list(src.ImageOrientationPatient)
    # The s×s new pixels covering source pixel (0, 0) are centred on the source's first pixel.
    iop = np.array(src.ImageOrientationPatient, dtype=float)
    ps = np.array(ds.PixelSpacing, dtype=float)
    ipp = np.array(ds.ImagePositionPatient, dtype=float)
    centres = [ipp + iop[:3] * ps[1] * c + iop[3:] * ps[0] * r for r in range(scale) for c in range(scale)]
    assert np.allclose(np.mean(centres, axis=0), np.array(src.ImagePositionPatient, dtype=float), atol=1e-4)
    assert list(ds.ImageType[:2]) == ["DERIVED", "SECONDARY"]
    assert ds.Modality == src.Modality and ds.SOPClassUID == src.SOPClassUID
    assert ds.SeriesInstanceUID == derived_series_uid(src.SeriesInstanceUID, "bicubic", "", scale)
    assert ds.SeriesDescription.startswith(f"SRx{scale} bicubic: ")
    assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == src.SeriesInstanceUID
    assert ds.ContributingEquipmentSequence[-1].Manufacturer == "srnode"
    assert "bicubic" in ds.DerivationDescription
    # Values stay HU, quantised only to the source's own rescale step; air below -1024 clips.
    back = modality_values(ds)
    assert np.abs(back - np.maximum(up, -1024)).max() <= float(getattr(src, "RescaleSlope", 1)) / 2 + 1e-6


@pytest.mark.parametrize("transfer_syntax", ["explicit_le", "rle", "jpeg2000_lossless", "jpegls_lossless"])
def test_every_ct_series_passes_dciodvfy(ct_dirs: list[Path], tmp_path: Path, transfer_syntax: str) -> None:
    sha = "0123456789abcdef" * 4
    derivation = Derivation(model="bicubic", checkpoint_sha256=sha, scale=2, transfer_syntax=transfer_syntax)
    for folder in ct_dirs:
        pairs = first_slices(folder, 2)
        classic = []
        for path, src in pairs:
            up = upscale(modality_values(src), 2)
            ds = derive_classic(src, up, derivation)
            classic.append(copy.deepcopy(ds))
            out = tmp_path / f"{folder.name}_{src.SOPInstanceUID}.dcm"
            encode(ds, transfer_syntax).save_as(out, enforce_file_format=True)
            assert new_errors(out, path) == set(), (folder.name, transfer_syntax)
            reread = pydicom.dcmread(out)
            assert str(reread.file_meta.TransferSyntaxUID) == str(
                {"explicit_le": "1.2.840.10008.1.2.1", "rle": "1.2.840.10008.1.2.5",
                 "jpeg2000_lossless": "1.2.840.10008.1.2.4.90",
                 "jpegls_lossless": "1.2.840.10008.1.2.4.80"}[transfer_syntax])
            # Lossless: the re-read HU equal what was written before encoding.
            assert np.array_equal(modality_values(reread), modality_values(classic[-1]))
            assert sha in list(reread.ContributingEquipmentSequence[-1].SoftwareVersions)
            assert reread.SOPInstanceUID == derivation.sop_uid(src.SOPInstanceUID)  # encoding keeps the UID
        enhanced = derive_enhanced(classic, pairs[0][1].SeriesInstanceUID, derivation)
        out = tmp_path / f"{folder.name}_enhanced.dcm"
        enhanced.save_as(out, enforce_file_format=True)
        assert new_errors(out, pairs[0][0]) == set(), (folder.name, "enhanced", transfer_syntax)
        assert int(enhanced.NumberOfFrames) == 2


def test_mr_with_rescale_and_non_square(shared_dir: Path, tmp_path: Path) -> None:
    folder = next((shared_dir / "data" / "mr").iterdir())
    path, src = first_slices(folder, 1)[0]
    ds = derive_classic(src, upscale(modality_values(src), 2),
                        Derivation(model="bicubic", checkpoint_sha256="", scale=2))
    out = tmp_path / "mr.dcm"
    ds.save_as(out, enforce_file_format=True)
    assert (ds.Rows, ds.Columns) == (src.Rows * 2, src.Columns * 2)
    assert new_errors(out, path) == set()


def test_wrong_shape_is_refused(ct_dirs: list[Path]) -> None:
    _, src = first_slices(ct_dirs[0], 1)[0]
    with pytest.raises(ValueError, match="expected"):
        derive_classic(src, np.zeros((10, 10)), Derivation(model="m", checkpoint_sha256="", scale=2))
