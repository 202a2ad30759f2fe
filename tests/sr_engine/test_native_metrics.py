"""Native-resolution noise/edge ratios against lanczos, their masks, and the edge MTF50 estimate."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pydicom
import pytest

from sr_engine import native_metrics as nm
from sr_engine.intensity import CT_RANGE, modality_values
from sr_engine.interpolate import lanczos_upscale

SCALE = 4


@pytest.fixture(scope="module", params=[0, 1, 2], ids=["b70f-chest", "ge-head", "b40f-chest"])
def native_and_lanczos(request: pytest.FixtureRequest, ct_dirs: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """The middle slice of each shared CT series, in HU, and its lanczos x4 (the engine's)."""
    files = sorted(ct_dirs[request.param].glob("*.dcm"))
    native = modality_values(pydicom.dcmread(files[len(files) // 2]))
    return native, lanczos_upscale(native, SCALE, clip=CT_RANGE)


def _flat_residual_std(native: np.ndarray, image: np.ndarray) -> float:
    """Std of image minus its 9x9 mean over the upsampled flat mask, computed independently."""
    mask = np.kron(nm.flat_tissue_mask(native), np.ones((SCALE, SCALE), dtype=bool))
    return float((image - nm.box_mean(image, 9))[mask].std())


def test_lanczos_against_itself_is_one(native_and_lanczos: tuple[np.ndarray, np.ndarray]) -> None:
    native, lz = native_and_lanczos
    r = nm.native_ratios(native, lz, lz, SCALE)
    assert r.noise_ratio == pytest.approx(1.0) and r.edge_ratio == pytest.approx(1.0)
    assert r.flat_pixels > 500 and r.edge_pixels > 1000


def test_added_noise_raises_the_noise_ratio(native_and_lanczos: tuple[np.ndarray, np.ndarray]) -> None:
    native, lz = native_and_lanczos
    # White noise as strong as lanczos's own residual: the ratio should be about sqrt(2).
    sigma = _flat_residual_std(native, lz)
    noisy = lz + np.random.default_rng(0).normal(0, sigma, lz.shape).astype(np.float32)
    r = nm.native_ratios(native, noisy, lz, SCALE)
    assert 1.3 < r.noise_ratio < 1.5
    assert r.edge_ratio == pytest.approx(1.0, abs=0.05)  # edges are hundreds of HU per pixel


def test_blur_flattens_edges_and_noise(native_and_lanczos: tuple[np.ndarray, np.ndarray]) -> None:
    native, lz = native_and_lanczos
    r = nm.native_ratios(native, nm.gaussian_blur(lz, 2.0), lz, SCALE)
    assert r.edge_ratio < 0.97
    assert r.noise_ratio < 0.8


def test_unsharp_mask_steepens_edges(native_and_lanczos: tuple[np.ndarray, np.ndarray]) -> None:
    native, lz = native_and_lanczos
    sharpened = lz + 1.5 * (lz - nm.gaussian_blur(lz, 2.0))
    r = nm.native_ratios(native, sharpened, lz, SCALE)
    assert r.edge_ratio > 1.05
    assert r.noise_ratio > 1.2  # unsharp masking sharpens the noise too: the guard must see it


def _phantom() -> np.ndarray:
    """Water disc (0 HU, mild noise) in air with a bone rod (1000 HU) off centre, 128²."""
    yy, xx = np.mgrid[0:128, 0:128]
    img = np.full((128, 128), -1000.0)
    img[(yy - 64) ** 2 + (xx - 64) ** 2 < 55**2] = 0.0
    img[(yy - 64) ** 2 + (xx - 80) ** 2 < 8**2] = 1000.0
    return img + np.random.default_rng(1).normal(0, 5, img.shape)


def test_masks_on_a_phantom() -> None:
    img = _phantom()
    yy, xx = np.mgrid[0:128, 0:128]
    r_body = np.hypot(yy - 64, xx - 64)
    r_rod = np.hypot(yy - 64, xx - 80)
    edges = nm.strong_edge_mask(img)
    # The rod's rim is among the strongest edges; the skin/air outline, as steep, is left out.
    rim = np.abs(r_rod - 8) < 0.7
    assert np.all(edges[rim]) and np.all(r_body[edges] < 55 - 2)
    assert edges.sum() == pytest.approx(0.05 * nm.body_mask(img).sum(), rel=0.05)
    flat = nm.flat_tissue_mask(img)
    water = (r_body < 55 - 6) & (r_rod > 8 + 6)  # 9x9 windows surely in water (diagonal 4*sqrt 2)
    assert flat.sum() == pytest.approx(0.2 * water.sum(), rel=0.15)
    # Every flat pixel keeps its 9x9 window in water: away from the outline and the rod.
    for y, x in zip(*np.nonzero(flat)):
        window = img[y - 4: y + 5, x - 4: x + 5]
        assert window.shape == (9, 9) and -150 <= window.min() and window.max() <= 250


def test_empty_masks_and_bad_shapes() -> None:
    air = np.full((64, 64), -1000.0)
    up = np.full((256, 256), -1000.0)
    r = nm.native_ratios(air, up, up, SCALE)
    assert r.flat_pixels == 0 and r.edge_pixels == 0
    assert math.isnan(r.noise_ratio) and math.isnan(r.edge_ratio)
    with pytest.raises(ValueError, match="must both be"):
        nm.native_ratios(air, up[:-4], up, SCALE)


def test_aggregate_skips_nan_slices() -> None:
    rs = [nm.NativeRatios(1.0, 1.1, 9, 9), nm.NativeRatios(1.4, 1.0, 9, 9), nm.NativeRatios(math.nan, 1.3, 0, 9)]
    agg = nm.aggregate(rs)
    assert agg["noise_ratio_median"] == pytest.approx(1.2) and agg["noise_ratio_slices"] == 2
    assert agg["edge_ratio_median"] == pytest.approx(1.1) and agg["edge_ratio_mean"] == pytest.approx(3.4 / 3)


def _slanted_edge(sigma: float, angle_deg: float = 5.0, n: int = 96) -> np.ndarray:
    """Air/tissue step along a line `angle_deg` off vertical, blurred by a Gaussian of `sigma` px."""
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float64)
    a = math.radians(angle_deg)
    d = (xx - n / 2) * math.cos(a) + (yy - n / 2) * math.sin(a)
    erf = np.vectorize(math.erf)
    return -1000.0 + 1000.0 * 0.5 * (1 + erf(d / (sigma * math.sqrt(2))))


@pytest.mark.parametrize("sigma", [1.0, 2.0])
def test_mtf50_of_a_gaussian_edge(sigma: float) -> None:
    img = _slanted_edge(sigma)
    expected = math.sqrt(math.log(2) / (2 * math.pi**2)) / sigma  # MTF of a Gaussian LSF at 0.5
    assert nm.edge_mtf50(img) == pytest.approx(expected, rel=0.05)
    # On an upscaled grid the same native sites are found and the answer is in native cycles/px.
    up = lanczos_upscale(img, SCALE)
    assert nm.edge_mtf50(up, SCALE, native_hu=img) == pytest.approx(expected, rel=0.05)


def test_mtf50_none_without_a_clean_edge() -> None:
    assert nm.edge_mtf50(np.zeros((64, 64))) is None
    assert nm.edge_mtf50(np.random.default_rng(0).normal(0, 50, (64, 64))) is None
    # An edge exactly on the pixel grid leaves the oversampled ESF half empty at native scale.
    assert nm.edge_mtf50(_slanted_edge(1.5, angle_deg=0.0)) is None


def test_mtf50_ranks_blur_on_real_ct(native_and_lanczos: tuple[np.ndarray, np.ndarray]) -> None:
    native, lz = native_and_lanczos
    sites = nm.find_edge_sites(native)
    assert sites, "every shared CT slice has a clean body/air or bone edge"
    sharp = nm.edge_mtf50(lz, SCALE, sites)
    blurred = nm.edge_mtf50(nm.gaussian_blur(lz, 4.0), SCALE, sites)
    assert sharp is not None and blurred is not None and blurred < sharp
