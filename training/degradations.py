"""Optional degradations for blind SR models, applied around the paper's x4 bicubic operator.

Order (BSRGAN / Real-ESRGAN style, simplified): blur the HR patch with a random Gaussian kernel,
downsample with the engine's antialiased bicubic `degrade`, then add Gaussian / Poisson noise and a
JPEG-like block-DCT quantisation. Blur (linear) runs on modality values before the mapping; noise
and JPEG-like run on the LR in the model's [0, 1] range. All float32: nothing is rounded to 8 bits
(the JPEG step quantises DCT coefficients, not pixels).
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np

# The JPEG standard's luminance quantisation table (ITU-T T.81, Annex K).
_JPEG_Q = np.array([
    [16, 11, 10, 16, 24, 40, 51, 61], [12, 12, 14, 19, 26, 58, 60, 55],
    [14, 13, 16, 24, 40, 57, 69, 56], [14, 17, 22, 29, 51, 87, 80, 62],
    [18, 22, 37, 56, 68, 109, 103, 77], [24, 35, 55, 64, 81, 104, 113, 92],
    [49, 64, 78, 87, 103, 121, 120, 101], [72, 92, 95, 98, 112, 100, 103, 99],
], dtype=np.float32)


def _dct_matrix(n: int = 8) -> np.ndarray:
    k = np.arange(n)[:, None]
    x = np.arange(n)[None, :]
    m = np.cos(math.pi * (2 * x + 1) * k / (2 * n)) * math.sqrt(2 / n)
    m[0] /= math.sqrt(2)
    return m.astype(np.float32)


_DCT8 = _dct_matrix(8)


@dataclass(frozen=True)
class DegradationConfig:
    """Probabilities and ranges of the optional degradations (all off by default)."""

    blur_prob: float = 0.0
    blur_sigma: tuple[float, float] = (0.2, 2.0)
    gaussian_noise_prob: float = 0.0
    gaussian_sigma: tuple[float, float] = (0.0, 0.01)  # in [0, 1] units
    poisson_noise_prob: float = 0.0
    poisson_peak: tuple[float, float] = (500.0, 5000.0)  # photons at value 1.0
    jpeg_prob: float = 0.0
    jpeg_quality: tuple[int, int] = (30, 95)
    # The series' own noise (training.noise_model), added to the LR in HU at this multiple of the
    # measured native standard deviation: LR patches then look like native slices to the model.
    native_noise_prob: float = 0.0
    native_noise_scale: tuple[float, float] = (0.5, 1.3)

    @property
    def enabled(self) -> bool:
        """Whether any degradation beyond bicubic can fire."""
        return any(p > 0 for p in (self.blur_prob, self.gaussian_noise_prob,
                                   self.poisson_noise_prob, self.jpeg_prob, self.native_noise_prob))


BLIND = DegradationConfig(blur_prob=0.5, gaussian_noise_prob=0.5, poisson_noise_prob=0.3,
                          jpeg_prob=0.3)
# CT at native resolution: the series' own noise on most LR patches (some stay clean so that the
# 128->512 protocol's bicubic LR is still in the training distribution), and a mild HR blur on
# some, which stands for a softer reconstruction kernel than the HR's and teaches edge recovery.
NATIVE_CT = DegradationConfig(blur_prob=0.3, blur_sigma=(0.3, 1.0), native_noise_prob=0.7,
                              native_noise_scale=(0.5, 1.3))


def with_overrides(base: DegradationConfig, overrides: Mapping[str, Any]) -> DegradationConfig:
    """`base` with some fields replaced (JSON lists become the tuples the ranges are)."""
    problem = degradation_problem(overrides)
    if problem:
        raise ValueError(f"degradation_overrides: {problem}")
    changes: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}
    return replace(base, **changes)


def degradation_problem(overrides: Mapping[str, Any]) -> str | None:
    """What is wrong with `overrides` (unknown field, probability outside [0, 1], bad range), or None."""
    known = {f.name: f for f in fields(DegradationConfig)}
    for key, value in overrides.items():
        if key not in known:
            return f"unknown field {key!r}; known: {', '.join(known)}"
        if key.endswith("_prob"):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                return f"{key} must be a probability in [0, 1], not {value!r}"
        elif not (isinstance(value, (list, tuple)) and len(value) == 2
                  and all(isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 for v in value)
                  and value[0] <= value[1]):
            return f"{key} must be a range [low, high] with 0 <= low <= high, not {value!r}"
    return None


def gaussian_kernel(sigma_x: float, sigma_y: float, theta: float, size: int = 21) -> np.ndarray:
    """An anisotropic Gaussian blur kernel, normalised to sum 1."""
    ax = np.arange(size, dtype=np.float32) - (size - 1) / 2
    xx, yy = np.meshgrid(ax, ax)
    c, s = math.cos(theta), math.sin(theta)
    xr, yr = c * xx + s * yy, -s * xx + c * yy
    k = np.exp(-0.5 * ((xr / sigma_x) ** 2 + (yr / sigma_y) ** 2))
    return (k / k.sum()).astype(np.float32)


def blur(img: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Convolve a 2-D image with a kernel (reflect padding, via FFT)."""
    kh, kw = kernel.shape
    ph, pw = kh // 2, kw // 2
    padded = np.pad(img, ((ph, ph), (pw, pw)), mode="reflect")
    shape = padded.shape
    out = np.fft.irfft2(np.fft.rfft2(padded) * np.fft.rfft2(kernel, shape), shape)
    # The FFT product is a circular convolution shifted by the kernel's half size.
    return out[2 * ph:2 * ph + img.shape[0], 2 * pw:2 * pw + img.shape[1]].astype(np.float32)


def jpeg_like(img: np.ndarray, quality: int) -> np.ndarray:
    """Quantise 8x8 block DCT coefficients like JPEG at `quality`, in float (no 8-bit pixels)."""
    q = max(1, min(100, int(quality)))
    scale = 5000 / q if q < 50 else 200 - 2 * q
    table = np.clip(np.floor((_JPEG_Q * scale + 50) / 100), 1, None) / 255.0
    h, w = img.shape
    ph, pw = (-h) % 8, (-w) % 8
    x = np.pad(img, ((0, ph), (0, pw)), mode="edge")
    blocks = x.reshape(x.shape[0] // 8, 8, x.shape[1] // 8, 8).transpose(0, 2, 1, 3)
    coef = _DCT8 @ blocks @ _DCT8.T
    coef = np.round(coef / table) * table
    rec = (_DCT8.T @ coef @ _DCT8).transpose(0, 2, 1, 3).reshape(x.shape)
    return rec[:h, :w].astype(np.float32)


def pre_downsample(hr: np.ndarray, cfg: DegradationConfig, rng: np.random.Generator) -> np.ndarray:
    """Degradations applied to the HR patch (modality values) before downsampling: blur."""
    if cfg.blur_prob > 0 and rng.random() < cfg.blur_prob:
        sx, sy = rng.uniform(*cfg.blur_sigma, size=2)
        hr = blur(hr, gaussian_kernel(float(sx), float(sy), float(rng.uniform(0, math.pi))))
    return hr


def post_downsample(lr: np.ndarray, cfg: DegradationConfig, rng: np.random.Generator) -> np.ndarray:
    """Degradations applied to the LR image after downsampling (noise, JPEG-like)."""
    if cfg.poisson_noise_prob > 0 and rng.random() < cfg.poisson_noise_prob:
        peak = float(rng.uniform(*cfg.poisson_peak))
        lr = (rng.poisson(np.clip(lr, 0, None) * peak) / peak).astype(np.float32)
    if cfg.gaussian_noise_prob > 0 and rng.random() < cfg.gaussian_noise_prob:
        lr = lr + rng.normal(0, rng.uniform(*cfg.gaussian_sigma), lr.shape).astype(np.float32)
    if cfg.jpeg_prob > 0 and rng.random() < cfg.jpeg_prob:
        lr = jpeg_like(lr, int(rng.integers(cfg.jpeg_quality[0], cfg.jpeg_quality[1] + 1)))
    return lr.astype(np.float32, copy=False)
