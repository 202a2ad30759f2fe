"""`sr_engine.metrics.ssim` (pytorch_msssim underneath) against the hand-written SSIM it replaced.

`_ssim_reference` below is the previous implementation, copied verbatim: it is the REFERENCE
the library-backed function must keep matching (the metric values in existing reports and
model cards were computed with it).
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sr_engine.metrics import HU_RANGE, HU_WINDOW, ssim, ssim_hu, ssim_window


# --- REFERENCE: the hand-written SSIM that sr_engine/metrics.py had before pytorch_msssim. ---
def _reference_as_float64(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch: {tuple(a.shape)} vs {tuple(b.shape)}")
    if a.dim() == 3:  # [N, H, W] -> [N, 1, H, W]
        a, b = a.unsqueeze(1), b.unsqueeze(1)
    return a.double(), b.double()


def _reference_gaussian_1d(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def _ssim_reference(a: torch.Tensor, b: torch.Tensor, data_range: float) -> torch.Tensor:
    """Standard SSIM per image (Wang et al. 2004): Gaussian 11x11, sigma 1.5, K1 0.01, K2 0.03, valid."""
    a, b = _reference_as_float64(a, b)
    n, c = a.shape[:2]
    g = _reference_gaussian_1d().to(a.device)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    # The 2-D Gaussian is separable: two 1-D passes over the five moment images at once.
    stack = torch.cat([a, b, a * a, b * b, a * b], dim=1)
    k = stack.shape[1]
    stack = F.conv2d(stack, g.view(1, 1, 11, 1).expand(k, 1, 11, 1), groups=k)
    stack = F.conv2d(stack, g.view(1, 1, 1, 11).expand(k, 1, 1, 11), groups=k)
    mu_a, mu_b, e_aa, e_bb, e_ab = stack.split(c, dim=1)
    var_a = e_aa - mu_a**2
    var_b = e_bb - mu_b**2
    cov = e_ab - mu_a * mu_b
    num = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
    den = (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    return (num / den).reshape(n, -1).mean(1)
# --- end of REFERENCE ---


# The agreement asked of the library-backed function; measured: a few 1e-16 (float64 rounding).
ATOL = 1e-12


def _ct_like(n: int, h: int, w: int, seed: int) -> torch.Tensor:
    """Smooth HU slices: air outside a soft-tissue disc with brighter (bone-like) blobs, [N, 1, H, W]."""
    gen = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    body = ((xx / 0.8) ** 2 + (yy / 0.6) ** 2 < 1).float()
    tissue = 40 + 30 * F.avg_pool2d(torch.randn(n, 1, h, w, generator=gen), 7, 1, 3)
    bone = (F.avg_pool2d(torch.rand(n, 1, h, w, generator=gen), 9, 1, 4) > 0.56).float() * 900
    return -1000 + body * (1000 + tissue + bone)


def _pairs() -> list[tuple[str, torch.Tensor, torch.Tensor, float]]:
    gen = torch.Generator().manual_seed(7)
    rand_a = torch.rand(4, 1, 37, 52, generator=gen)
    rand_b = torch.rand(4, 1, 37, 52, generator=gen)
    multi_a = torch.rand(2, 3, 24, 24, generator=gen) * 255
    multi_b = (multi_a + 20 * torch.randn(2, 3, 24, 24, generator=gen)).clamp(0, 255)
    hr = _ct_like(3, 96, 80, seed=1)
    lr = F.interpolate(hr, scale_factor=0.25, mode="bicubic", antialias=True)
    sr = F.interpolate(lr, size=hr.shape[-2:], mode="bicubic", align_corners=False)
    noisy = hr + 25 * torch.randn(hr.shape, generator=gen)
    return [
        ("uniform noise, float32", rand_a, rand_b, 1.0),
        ("uniform noise, [N, H, W]", rand_a[:, 0], rand_b[:, 0], 1.0),
        ("three channels, 0-255", multi_a, multi_b, 255.0),
        ("CT-like, bicubic x4, HU range", sr.clamp(*HU_RANGE), hr.clamp(*HU_RANGE), HU_RANGE[1] - HU_RANGE[0]),
        ("CT-like, noisy, soft-tissue window", noisy.clamp(*HU_WINDOW), hr.clamp(*HU_WINDOW),
         HU_WINDOW[1] - HU_WINDOW[0]),
        ("smallest image (11x11), float64", rand_a[:, :, :11, :11].double(), rand_b[:, :, :11, :11].double(), 1.0),
    ]


@pytest.mark.parametrize("case", _pairs(), ids=lambda c: c[0])
def test_library_ssim_matches_the_previous_implementation(
        case: tuple[str, torch.Tensor, torch.Tensor, float]) -> None:
    _, a, b, data_range = case
    got = ssim(a, b, data_range)
    want = _ssim_reference(a, b, data_range)
    assert got.dtype == torch.float64 and got.shape == (a.shape[0],)
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)


def test_hu_variants_match_the_previous_implementation() -> None:
    hr = _ct_like(2, 64, 64, seed=3)
    sr = F.interpolate(F.interpolate(hr, scale_factor=0.5, mode="bicubic", antialias=True),
                       size=(64, 64), mode="bicubic", align_corners=False)
    lo, hi = HU_RANGE
    torch.testing.assert_close(ssim_hu(sr, hr), _ssim_reference(sr.clamp(lo, hi), hr.clamp(lo, hi), hi - lo),
                               atol=ATOL, rtol=0)
    lo, hi = HU_WINDOW
    torch.testing.assert_close(ssim_window(sr, hr),
                               _ssim_reference(sr.clamp(lo, hi), hr.clamp(lo, hi), hi - lo), atol=ATOL, rtol=0)


def test_identical_images_give_exactly_one() -> None:
    x = _ct_like(2, 48, 40, seed=5)
    assert torch.equal(ssim(x, x, 4095), torch.ones(2, dtype=torch.float64))
    y = torch.rand(3, 2, 20, 30)
    assert torch.equal(ssim(y, y.clone(), 1.0), torch.ones(3, dtype=torch.float64))


def test_images_smaller_than_the_window_are_refused() -> None:
    # The reference fails on them too (conv2d); the library alone would skip the smoothing.
    with pytest.raises(ValueError, match="11x11"):
        ssim(torch.rand(1, 1, 10, 32), torch.rand(1, 1, 10, 32), 1.0)
    with pytest.raises(RuntimeError):
        _ssim_reference(torch.rand(1, 1, 10, 32), torch.rand(1, 1, 10, 32), 1.0)
    with pytest.raises(ValueError, match="shape mismatch"):
        ssim(torch.rand(1, 1, 16, 16), torch.rand(1, 1, 16, 17), 1.0)
