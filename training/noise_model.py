"""The acquisition's own noise, measured from a series and re-synthesised on training LR patches.

Why: a bicubic x4 downscale averages CT noise away (about a quarter of its standard deviation is
left), so a model trained on clean LR treats the noise of a native slice as detail and sharpens it.
Training on LR patches that carry the noise a native slice carries (its level *and* its texture:
the noise power spectrum, which the reconstruction kernel shapes) teaches the model that this
texture is not anatomy.

Measurement: square regions of soft tissue (HU in [-150, 250] throughout) whose standard deviation
is among the lowest fifth of all such regions are taken as "flat"; a fitted plane is removed from
each (slow anatomy), and the 2-D noise power spectrum is the mean |FFT|^2. CT noise is close to
isotropic in the axial plane, so the spectrum is kept as a radial profile, which a synthesiser
can lay out on any patch size. The flat-region standard deviation slightly over-estimates the
noise (soft tissue is not perfectly uniform); that errs on the side of suppressing texture.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

_SOFT_TISSUE_HU = (-150.0, 250.0)
_RADIAL_BINS = 24
_ANATOMY_FREQ = 0.08  # cycles/pixel


@dataclass(frozen=True)
class NoiseModel:
    """Noise of one series: its standard deviation (HU) and normalised radial power spectrum."""

    sigma_hu: float
    # Power per radial frequency bin (cycles/pixel, 0 .. 0.5*sqrt(2)), normalised to mean 1.
    radial_nps: tuple[float, ...]
    regions: int  # how many flat regions the estimate rests on

    def as_dict(self) -> dict[str, object]:
        """JSON-friendly form (run.json, model cards)."""
        d = asdict(self)
        d["radial_nps"] = [round(v, 4) for v in self.radial_nps]
        d["sigma_hu"] = round(self.sigma_hu, 2)
        return d

    @property
    def peak_frequency(self) -> float:
        """Frequency (cycles/pixel) of the spectrum's maximum: higher for sharper kernels."""
        edges = np.linspace(0, 0.5 * np.sqrt(2), _RADIAL_BINS + 1)
        centres = (edges[:-1] + edges[1:]) / 2
        return float(centres[int(np.argmax(self.radial_nps))])

    def synthesise(self, shape: tuple[int, int], rng: np.random.Generator,
                   sigma_hu: float | None = None) -> np.ndarray:
        """A float32 noise field (HU) with this spectrum and `sigma_hu` (default: the measured one)."""
        h, w = shape
        filt = np.sqrt(_radial_to_2d(np.asarray(self.radial_nps, dtype=np.float64), h, w))
        white = rng.standard_normal((h, w))
        field = np.fft.ifft2(np.fft.fft2(white) * filt).real
        std = float(field.std())
        target = self.sigma_hu if sigma_hu is None else sigma_hu
        return (field * (target / std if std > 0 else 0.0)).astype(np.float32)


def _frequency_radius(h: int, w: int) -> np.ndarray:
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.fftfreq(w)[None, :]
    return np.sqrt(fy * fy + fx * fx)


def _radial_to_2d(profile: np.ndarray, h: int, w: int) -> np.ndarray:
    edges = np.linspace(0, 0.5 * np.sqrt(2), len(profile) + 1)
    centres = (edges[:-1] + edges[1:]) / 2
    return np.interp(_frequency_radius(h, w), centres, profile)


def _plane_removed(roi: np.ndarray) -> np.ndarray:
    n = roi.shape[0]
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float64)
    a = np.column_stack([np.ones(n * n), yy.ravel(), xx.ravel()])
    coef, *_ = np.linalg.lstsq(a, roi.ravel().astype(np.float64), rcond=None)
    return roi - (a @ coef).reshape(n, n)


def flat_regions(slice_hu: np.ndarray, roi: int = 32, fraction: float = 0.2) -> list[np.ndarray]:
    """Plane-removed square regions of the flattest soft tissue of one slice (may be empty)."""
    lo, hi = _SOFT_TISSUE_HU
    candidates: list[tuple[float, np.ndarray]] = []
    step = roi // 2
    for y in range(0, slice_hu.shape[0] - roi + 1, step):
        for x in range(0, slice_hu.shape[1] - roi + 1, step):
            r = np.asarray(slice_hu[y:y + roi, x:x + roi], dtype=np.float64)
            # Judge "soft tissue throughout" on 4x4 block means: a sharp kernel's noise alone
            # sends single pixels far outside the soft-tissue window.
            blocks = r.reshape(roi // 4, 4, roi // 4, 4).mean(axis=(1, 3))
            if blocks.min() < lo or blocks.max() > hi:
                continue
            d = _plane_removed(r)
            candidates.append((float(d.std()), d))
    if not candidates:
        return []
    candidates.sort(key=lambda c: c[0])
    keep = max(1, int(round(len(candidates) * fraction)))
    return [d for _, d in candidates[:keep]]


def estimate(volume_hu: np.ndarray, roi: int = 32, max_slices: int = 12,
             fraction: float = 0.2) -> NoiseModel | None:
    """Estimate a series' noise from up to `max_slices` evenly spaced slices (None: no flat tissue)."""
    n = volume_hu.shape[0]
    picks = np.unique(np.linspace(0, n - 1, min(n, max_slices)).round().astype(int))
    regions: list[np.ndarray] = []
    for z in picks:
        regions.extend(flat_regions(np.asarray(volume_hu[int(z)], dtype=np.float32), roi, fraction))
    if not regions:
        return None
    stack = np.stack(regions)
    nps = (np.abs(np.fft.fft2(stack)) ** 2).mean(axis=0) / (roi * roi)
    radius = _frequency_radius(roi, roi)
    edges = np.linspace(0, 0.5 * np.sqrt(2), _RADIAL_BINS + 1)
    which = np.clip(np.digitize(radius.ravel(), edges) - 1, 0, _RADIAL_BINS - 1)
    sums = np.bincount(which, weights=nps.ravel(), minlength=_RADIAL_BINS)
    counts = np.bincount(which, minlength=_RADIAL_BINS)
    profile = np.where(counts > 0, sums / np.maximum(counts, 1), 0.0)
    # Empty bins (none at roi >= 8) would otherwise read as "no power" at that frequency.
    profile = np.interp(np.arange(_RADIAL_BINS), np.flatnonzero(counts), profile[counts > 0])
    # Below _ANATOMY_FREQ the regions' power is mostly slow anatomy, not noise (CT noise has
    # little power near DC: the reconstruction's ramp filter): continue the spectrum linearly to 0.
    centres = (edges[:-1] + edges[1:]) / 2
    first = int(np.searchsorted(centres, _ANATOMY_FREQ))
    profile[:first] = profile[first] * centres[:first] / centres[first]
    # The variance is the spectrum's mean over the 2-D frequency grid (Parseval).
    sigma = float(np.sqrt(_radial_to_2d(profile, roi, roi).mean()))
    profile = profile / profile.mean()
    return NoiseModel(sigma_hu=sigma, radial_nps=tuple(float(v) for v in profile),
                      regions=len(regions))
