"""The CT noise model: measured from flat tissue, re-synthesised with its level and texture."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch

from sr_engine.intensity import mapping_for, modality_values
from training.degradations import NATIVE_CT, DegradationConfig
from training.noise_model import NoiseModel, estimate
from training.patches import PatchPairs

CT = Path(__file__).resolve().parents[3] / "shared" / "data" / "ct"


def _phantom(sigma: float, smooth: float, rng: np.random.Generator, n: int = 6) -> np.ndarray:
    """Soft tissue (40 HU) with CT-like noise of std `sigma`: a ramp (little power near DC, as after
    filtered back-projection) apodised by a Gaussian of `smooth` pixels (the reconstruction kernel)."""
    f = np.sqrt(np.fft.fftfreq(256)[:, None] ** 2 + np.fft.fftfreq(256)[None, :] ** 2)
    vols = []
    for _ in range(n):
        field = np.fft.ifft2(np.fft.fft2(rng.standard_normal((256, 256)))
                             * f * np.exp(-2 * (np.pi * f * smooth) ** 2)).real
        vols.append(40 + field / field.std() * sigma)
    return np.stack(vols).astype(np.float32)


def test_estimate_recovers_level_and_kernel_of_synthetic_noise() -> None:
    rng = np.random.default_rng(0)
    sharp = estimate(_phantom(30.0, 0.5, rng))
    soft = estimate(_phantom(10.0, 2.0, rng))
    assert sharp is not None and soft is not None
    # Within 20 %: the low-frequency continuation changes the total slightly.
    assert sharp.sigma_hu == pytest.approx(30.0, rel=0.2)
    assert soft.sigma_hu == pytest.approx(10.0, rel=0.2)
    assert sharp.peak_frequency > soft.peak_frequency


def test_synthesised_noise_has_the_requested_level_and_measured_texture() -> None:
    rng = np.random.default_rng(1)
    model = estimate(_phantom(25.0, 0.5, rng))
    assert model is not None
    field = model.synthesise((256, 256), np.random.default_rng(2))
    assert float(field.std()) == pytest.approx(model.sigma_hu, rel=1e-3)
    again = estimate(40 + field[None])
    assert again is not None and again.peak_frequency == pytest.approx(model.peak_frequency, abs=0.06)
    assert model.synthesise((32, 32), np.random.default_rng(3), sigma_hu=5.0).std() == pytest.approx(5.0, rel=1e-3)


def test_no_soft_tissue_gives_none() -> None:
    assert estimate(np.full((2, 64, 64), -1000.0, dtype=np.float32)) is None


def _series(name: str) -> np.ndarray:
    files = sorted((CT / name).glob("*.dcm"))[:6]
    return np.stack([modality_values(pydicom.dcmread(f)) for f in files]).astype(np.float32)


def test_sharp_kernel_series_is_noisier_and_finer_than_the_standard_one() -> None:
    """The shared B70f chest against the GE STANDARD head: the kernel shows in both figures."""
    b70f = estimate(_series("cptac-lscc_C3N-00247_chest"))
    std = estimate(_series("ge-head_dcm-qa-ct"))
    assert b70f is not None and std is not None
    assert b70f.sigma_hu > 3 * std.sigma_hu
    assert b70f.peak_frequency > std.peak_frequency


class _Cached:
    def __init__(self, vol: np.ndarray) -> None:
        self._vol = vol
        self.record = type("R", (), {"cache_key": "phantom"})()

    def volume(self) -> np.ndarray:
        return self._vol


def test_native_degradation_puts_the_series_noise_on_lr_patches() -> None:
    rng = np.random.default_rng(4)
    vol = _phantom(40.0, 0.6, rng, n=2)
    mapping = mapping_for("CT")
    kw = dict(scale=4, hr_patch=128, length=8, seed=0, augment=False)
    clean = PatchPairs([_Cached(vol)], mapping, degradations=DegradationConfig(), **kw)
    noisy = PatchPairs([_Cached(vol)], mapping,
                       degradations=DegradationConfig(native_noise_prob=1.0, native_noise_scale=(1.0, 1.0)),
                       **kw)
    assert noisy.noise_models[0] is not None and clean.noise_models == [None]
    hu = mapping.high - mapping.low
    lr_clean = torch.stack([clean[i][0] for i in range(8)]).numpy() * hu
    lr_noisy = torch.stack([noisy[i][0] for i in range(8)]).numpy() * hu
    # Bicubic x4 leaves about a quarter of the noise; the native degradation restores its level.
    assert lr_clean.std() < 0.4 * 40
    assert (lr_noisy - lr_clean).std() == pytest.approx(noisy.noise_models[0].sigma_hu, rel=0.15)
    assert NATIVE_CT.enabled and isinstance(noisy.noise_models[0], NoiseModel)
