"""Degradation operator and image-quality metrics (PSNR, Gaussian SSIM) on float data.

Tensors are [N, C, H, W]; metrics return one value per image (shape [N]) so that callers can
report per slice.  The HU variants are the ones `srnode evaluate` prints.
"""
from __future__ import annotations

import pytorch_msssim as _msssim
import torch
import torch.nn.functional as F

HU_RANGE: tuple[float, float] = (-1024.0, 3071.0)
HU_WINDOW: tuple[float, float] = (-160.0, 240.0)


def degrade(hr: torch.Tensor, scale: int) -> torch.Tensor:
    """The evaluation LR operator: antialiased bicubic downscaling by `scale`."""
    return F.interpolate(hr, scale_factor=1 / scale, mode="bicubic", antialias=True)


def _as_float64(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch: {tuple(a.shape)} vs {tuple(b.shape)}")
    if a.dim() == 3:  # [N, H, W] -> [N, 1, H, W]
        a, b = a.unsqueeze(1), b.unsqueeze(1)
    return a.double(), b.double()


def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float) -> torch.Tensor:
    """PSNR in dB per image; identical images give +inf."""
    a, b = _as_float64(a, b)
    mse = (a - b).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(data_range**2 / mse)


def _gaussian_window(channels: int, size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """The 1-D Gaussian in float64, one per channel, as pytorch_msssim takes it ([C, 1, 1, size])."""
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return (g / g.sum()).view(1, 1, 1, size).repeat(channels, 1, 1, 1)


def ssim(a: torch.Tensor, b: torch.Tensor, data_range: float) -> torch.Tensor:
    """Standard SSIM per image (Wang et al. 2004): Gaussian 11x11, sigma 1.5, K1 0.01, K2 0.03, valid.

    Computed by pytorch_msssim in float64 (separable Gaussian, no padding; the mean over
    channels of each channel's mean SSIM, which is the mean over all channels and pixels since
    the channels have the same size), with the window built here in float64 rather than the
    library's float32 default. Images smaller than the window are refused: the library would
    skip the smoothing along that axis and return something that is not SSIM.
    """
    a, b = _as_float64(a, b)
    if min(a.shape[-2:]) < 11:
        raise ValueError(f"SSIM needs images of at least 11x11 pixels, not {tuple(a.shape[-2:])}")
    win = _gaussian_window(a.shape[1]).to(a.device)
    out: torch.Tensor = _msssim.ssim(a, b, data_range=data_range, size_average=False, win=win,
                                     K=(0.01, 0.03))
    return out


def _clipped(x: torch.Tensor, lo_hi: tuple[float, float]) -> torch.Tensor:
    return x.double().clamp(*lo_hi)


def psnr_hu(sr: torch.Tensor, hr: torch.Tensor, window: tuple[float, float] = HU_RANGE) -> torch.Tensor:
    """PSNR on HU clipped to `window` (default [-1024, 3071], data range 4095)."""
    return psnr(_clipped(sr, window), _clipped(hr, window), window[1] - window[0])


def ssim_hu(sr: torch.Tensor, hr: torch.Tensor, window: tuple[float, float] = HU_RANGE) -> torch.Tensor:
    """SSIM on HU clipped to `window` (default [-1024, 3071], data range 4095)."""
    return ssim(_clipped(sr, window), _clipped(hr, window), window[1] - window[0])


def psnr_window(sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
    """PSNR in the soft-tissue window [-160, 240] HU (data range 400)."""
    return psnr_hu(sr, hr, HU_WINDOW)


def ssim_window(sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
    """SSIM in the soft-tissue window [-160, 240] HU (data range 400)."""
    return ssim_hu(sr, hr, HU_WINDOW)


def lr_consistency_psnr(sr: torch.Tensor, lr: torch.Tensor, scale: int, data_range: float) -> torch.Tensor:
    """PSNR between the input LR and the output downscaled with the same operator, per image."""
    return psnr(degrade(sr.double(), scale), lr.double(), data_range)


def project_consistent(
    sr: torch.Tensor, lr: torch.Tensor, scale: int, iterations: int = 10
) -> torch.Tensor:
    """Iterative back-projection of `sr` towards the set where degrade(sr) == lr."""
    x = sr.double().clone()
    target = lr.double()
    for _ in range(iterations):
        residual = target - degrade(x, scale)
        x = x + F.interpolate(residual, size=x.shape[-2:], mode="bicubic", align_corners=False)
    return x.to(sr.dtype)
