"""Degradation operator, PSNR, Gaussian SSIM, HU variants, LR consistency and projection."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from sr_engine.metrics import (
    degrade,
    lr_consistency_psnr,
    project_consistent,
    psnr,
    psnr_hu,
    psnr_window,
    ssim,
    ssim_hu,
)


def _ssim_2d_reference(a: torch.Tensor, b: torch.Tensor, data_range: float) -> torch.Tensor:
    """SSIM with a full (non-separable) 11x11 Gaussian window, straight from the paper's formula."""
    x = torch.arange(11, dtype=torch.float64) - 5
    g = torch.exp(-(x**2) / (2 * 1.5**2))
    w = torch.outer(g, g)
    w = (w / w.sum())[None, None]
    a, b = a.double(), b.double()
    f = lambda t: F.conv2d(t, w)  # noqa: E731
    ma, mb = f(a), f(b)
    va, vb, cov = f(a * a) - ma**2, f(b * b) - mb**2, f(a * b) - ma * mb
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    return (((2 * ma * mb + c1) * (2 * cov + c2)) / ((ma**2 + mb**2 + c1) * (va + vb + c2))).flatten(1).mean(1)


def test_degrade_is_antialiased_bicubic() -> None:
    hr = torch.rand(2, 1, 64, 48)
    lr = degrade(hr, 4)
    assert lr.shape == (2, 1, 16, 12)
    assert torch.equal(lr, F.interpolate(hr, scale_factor=0.25, mode="bicubic", antialias=True))


def test_psnr_known_values() -> None:
    a = torch.zeros(2, 1, 8, 8)
    b = torch.full((2, 1, 8, 8), 0.1)
    torch.testing.assert_close(psnr(a, b, 1.0), torch.full((2,), 20.0, dtype=torch.float64))
    assert math.isinf(psnr(a, a, 1.0)[0].item())


def test_ssim_matches_reference_and_orders_noise() -> None:
    torch.manual_seed(0)
    clean = F.avg_pool2d(torch.rand(3, 1, 80, 80), 5, 1, 2) * 4095 - 1024
    noisy = clean + torch.randn_like(clean) * torch.tensor([10.0, 50.0, 200.0]).view(3, 1, 1, 1)
    got = ssim(noisy, clean, 4095)
    torch.testing.assert_close(got, _ssim_2d_reference(noisy, clean, 4095), atol=1e-10, rtol=0)
    assert got[0] > got[1] > got[2]
    torch.testing.assert_close(ssim(clean, clean, 4095), torch.ones(3, dtype=torch.float64))


def test_hu_variants_clip_before_comparing() -> None:
    hr = torch.full((1, 1, 16, 16), -1024.0)
    sr = torch.full((1, 1, 16, 16), -3000.0)  # below the range: identical after clipping
    assert math.isinf(psnr_hu(sr, hr).item())
    assert ssim_hu(sr, hr).item() == 1.0
    soft = torch.full((1, 1, 16, 16), 40.0)
    assert psnr_window(soft + 40, soft).item() == 10 * math.log10(400**2 / 40**2)


def test_lr_consistency_and_projection() -> None:
    torch.manual_seed(0)
    hr = F.avg_pool2d(torch.rand(2, 1, 128, 128), 3, 1, 1)
    lr = degrade(hr, 4)
    sr = F.interpolate(lr, scale_factor=4, mode="nearest")
    before = lr_consistency_psnr(sr, lr, 4, 1.0)
    projected = project_consistent(sr, lr, 4, iterations=10)
    after = lr_consistency_psnr(projected, lr, 4, 1.0)
    assert (after > before + 10).all(), (before, after)
    assert lr_consistency_psnr(hr, lr, 4, 1.0).min() > 100  # HR is consistent by construction
