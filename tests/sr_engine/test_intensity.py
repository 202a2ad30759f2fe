"""Stored <-> modality <-> unit: exact round trips, clipping to BitsStored, float end to end."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from sr_engine.intensity import (
    CT_MAPPING,
    IntensityMapping,
    mapping_for,
    modality_values,
    stored_range,
    to_stored,
)
from sr_engine.interpolate import Bicubic
from sr_engine.model_entry import IntensityConfig
from sr_engine.upscale import Upscaler


def _image(stored: np.ndarray, bits_stored: int, signed: bool, slope: float = 1.0, intercept: float = 0.0,
           modality: str = "CT") -> Dataset:
    """A minimal single- or multi-frame image dataset holding `stored` (little endian, 16-bit)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = modality
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = stored.shape[-2:]
    if stored.ndim == 3:
        ds.NumberOfFrames = stored.shape[0]
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 1 if signed else 0
    ds.RescaleSlope = slope
    ds.RescaleIntercept = intercept
    ds.PixelData = stored.astype("<i2" if signed else "<u2").tobytes()
    return ds


CASES = {
    # (bits stored, signed, slope, intercept)
    "ct_unsigned_12bit": (12, False, 1.0, -1024.0),
    "ct_signed_12bit": (12, True, 1.0, 0.0),
    "ct_unsigned_16bit": (16, False, 1.0, -32768.0),
    "ct_signed_16bit": (16, True, 1.0, -1024.0),
    "ct_slope_half": (16, True, 0.5, -1024.0),
}


@pytest.mark.parametrize("case", CASES)
def test_synthetic_round_trip_is_exact(case: str) -> None:
    bits, signed, slope, intercept = CASES[case]
    rng = np.random.default_rng(0)
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    stored = rng.integers(lo, hi + 1, size=(32, 48))
    stored[0, :2] = lo, hi  # the extremes survive too
    ds = _image(stored, bits, signed, slope, intercept)
    values = modality_values(ds)
    assert values.dtype == np.float32
    np.testing.assert_array_equal(values, (stored * slope + intercept).astype(np.float32))
    back = to_stored(values, ds)
    assert back.dtype == (np.int16 if signed else np.uint16)
    np.testing.assert_array_equal(back, stored)


@pytest.mark.parametrize("case", CASES)
def test_to_stored_clips_to_bits_stored(case: str) -> None:
    bits, signed, slope, intercept = CASES[case]
    ds = _image(np.zeros((2, 2), dtype=np.int64), bits, signed, slope, intercept)
    lo, hi = stored_range(ds)
    out = to_stored(np.array([[-1e9, 1e9], [lo * slope + intercept, hi * slope + intercept]]), ds)
    np.testing.assert_array_equal(out, [[lo, hi], [lo, hi]])


def test_real_ct_round_trip(ct_dirs: list[Path]) -> None:
    # unsigned 12-bit with intercept -1024 (Siemens) and signed 16-bit (GE) from ../shared
    for d in ct_dirs:
        for path in sorted(d.glob("*.dcm"))[:2]:
            ds = pydicom.dcmread(path)
            values = modality_values(ds)
            assert values.dtype == np.float32
            back = to_stored(values, ds)
            assert back.dtype == ds.pixel_array.dtype
            np.testing.assert_array_equal(back, ds.pixel_array)


def test_real_mr_with_rescale_round_trip(shared_dir: Path) -> None:
    paths = sorted((shared_dir / "data" / "mr").rglob("*.dcm"))
    assert paths
    for path in paths:
        ds = pydicom.dcmread(path)
        assert float(ds.RescaleSlope) != 1.0
        values = modality_values(ds)
        np.testing.assert_allclose(values, ds.pixel_array * float(ds.RescaleSlope), rtol=1e-6)
        np.testing.assert_array_equal(to_stored(values, ds), ds.pixel_array)


def test_multiframe_per_frame_rescale() -> None:
    stored = np.arange(3 * 4 * 4).reshape(3, 4, 4)
    ds = _image(stored, 16, False)
    ds.PerFrameFunctionalGroupsSequence = Sequence()
    for slope, intercept in [(1.0, -1024.0), (2.0, -1000.0), (0.5, 0.0)]:
        pvt = Dataset()
        pvt.RescaleSlope, pvt.RescaleIntercept, pvt.RescaleType = slope, intercept, "HU"
        item = Dataset()
        item.PixelValueTransformationSequence = Sequence([pvt])
        ds.PerFrameFunctionalGroupsSequence.append(item)
    values = modality_values(ds)
    np.testing.assert_array_equal(values[1], stored[1] * 2.0 - 1000.0)
    np.testing.assert_array_equal(values[2], stored[2] * 0.5)
    np.testing.assert_array_equal(to_stored(values, ds), stored)


def test_modality_lut() -> None:
    stored = np.arange(16).reshape(4, 4) + 100
    ds = _image(stored, 12, False)
    del ds.RescaleSlope, ds.RescaleIntercept
    item = Dataset()
    item.LUTDescriptor = [256, 100, 16]
    item.ModalityLUTType = "HU"
    item.LUTData = [3 * i for i in range(256)]
    ds.ModalityLUTSequence = Sequence([item])
    values = modality_values(ds)
    np.testing.assert_array_equal(values, 3.0 * (stored - 100))
    np.testing.assert_array_equal(to_stored(values, ds), stored)


def test_ct_mapping_defaults_and_inverse() -> None:
    m = mapping_for("CT")
    assert (m.low, m.high) == (-1024.0, 3071.0) and m == CT_MAPPING
    hu = np.array([-1024.0, -1000.0, 0.0, 40.5, 3071.0], dtype=np.float32)
    np.testing.assert_allclose(m.from_unit(m.to_unit(hu)), hu, atol=1e-3)
    assert m.to_unit(np.array([-3000.0, 9000.0])).tolist() == [0.0, 1.0]
    t = torch.tensor([0.0, 1.0])
    assert torch.equal(m.from_unit(t), torch.tensor([-1024.0, 3071.0]))


def test_mr_percentile_mapping_and_config() -> None:
    values = np.linspace(0, 1000, 10001, dtype=np.float32)
    m = mapping_for("MR", values)
    assert m.low == pytest.approx(5.0) and m.high == pytest.approx(995.0)
    with pytest.raises(ValueError, match="needs the series"):
        mapping_for("MR")
    fixed = mapping_for("MR", values, IntensityConfig(mode="fixed", low=0, high=500))
    assert (fixed.low, fixed.high) == (0, 500)
    full_range = IntensityConfig(mode="percentile", percentile_low=0, percentile_high=100)
    assert mapping_for("CT", values, full_range).high == 1000
    flat = mapping_for("DX", np.full(10, 7.0))
    assert flat.high > flat.low
    with pytest.raises(ValueError):
        IntensityMapping(1.0, 1.0)


def test_float_end_to_end_no_eight_bit_step(ct_slice_hu: torch.Tensor) -> None:
    # A soft-tissue patch upscaled through the unit mapping keeps sub-HU precision: an 8-bit path
    # would quantise [-1024, 3071] into 16 HU steps.
    hu = ct_slice_hu[0, :, 200:264, 200:264].numpy()
    up = Upscaler(Bicubic(4), 4, tile=None, channels_last=False)
    out = up.upscale_slices(hu, CT_MAPPING)
    assert out.dtype == np.float32 and out.shape == (1, 256, 256)
    direct = torch.nn.functional.interpolate(torch.from_numpy(hu)[None], scale_factor=4, mode="bicubic")[0].numpy()
    inside = (direct > -1000) & (direct < 3000)
    assert np.abs(out - direct)[inside].max() < 0.01
    assert len(np.unique(np.round(out, 2))) > 4096
