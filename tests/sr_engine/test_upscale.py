"""Tiled/batched inference: tiled == untiled, OOM retries never keep a stale tile, grey <-> RGB."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from sr_engine.archs import ARCHS, create_model, load_checkpoint, load_state_dict, state_dict_for_export
from sr_engine.intensity import CT_MAPPING
from sr_engine.interpolate import Bicubic
from sr_engine.metrics import degrade, psnr
from sr_engine.upscale import Upscaler, tile_starts
from tests.sr_engine.conftest import TINY


def _hr_lr(ct_slice_hu: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    hr = CT_MAPPING.to_unit(ct_slice_hu[..., 160:160 + size, 160:160 + size])
    return hr, degrade(hr, 4).clamp(0, 1)


def test_tile_starts_cover_with_overlap() -> None:
    assert tile_starts(100, 128, 8) == [0]
    starts = tile_starts(100, 32, 8)
    assert starts[0] == 0 and starts[-1] == 68
    assert all(b - a <= 24 for a, b in zip(starts, starts[1:]))


def test_real_realesrgan_tiled_equals_untiled(weights_dir: Path, ct_slice_hu: torch.Tensor) -> None:
    d = load_checkpoint(weights_dir / "RealESRGAN_x4plus.pth", "realesrgan")
    hr, lr = _hr_lr(ct_slice_hu, 192)  # LR 48x48 -> 2x2 tiles of 32 with 16 px overlap
    untiled = Upscaler(d, 4, tile=None).upscale_unit(lr)
    tiled = Upscaler(d, 4, tile=32, overlap=16).upscale_unit(lr)
    gap = abs(psnr(tiled, hr, 1.0).item() - psnr(untiled, hr, 1.0).item())
    assert gap < 0.05, gap
    assert psnr(tiled, untiled, 1.0).item() > 45


@pytest.mark.parametrize("arch", ARCHS)
def test_every_arch_tiled_equals_untiled(arch: str, ct_slice_hu: torch.Tensor) -> None:
    torch.manual_seed(1)
    d = load_state_dict(state_dict_for_export(create_model(arch, **TINY[arch])), arch)
    hr, lr = _hr_lr(ct_slice_hu, 160)  # LR 40x40, tiles of 24 with 12 px overlap
    untiled = Upscaler(d, 4, tile=None).upscale_unit(lr)
    tiled = Upscaler(d, 4, tile=24, overlap=12).upscale_unit(lr)
    assert tiled.shape == untiled.shape == (1, 1, 160, 160)
    assert abs(psnr(tiled, hr, 1.0).item() - psnr(untiled, hr, 1.0).item()) < 0.05


def test_batches_match_single_slices() -> None:
    d = load_state_dict(state_dict_for_export(create_model("dpsr", **TINY["dpsr"])), "dpsr")
    x = torch.rand(5, 1, 20, 20)
    one = Upscaler(d, 4, tile=12, overlap=4, batch=1).upscale_unit(x)
    three = Upscaler(d, 4, tile=12, overlap=4, batch=3).upscale_unit(x)
    torch.testing.assert_close(one, three, atol=1e-5, rtol=0)


class _OutOfMemoryAfter(torch.nn.Module):
    """Wraps a real module and raises CUDA-style OOM for large tiles or on one chosen call."""

    image_channels = 3

    def __init__(self, inner: torch.nn.Module, max_side: int | None = None, fail_on_call: int | None = None):
        super().__init__()
        self.inner, self.max_side, self.fail_on_call, self.calls = inner, max_side, fail_on_call, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if (self.max_side and max(x.shape[-2:]) > self.max_side) or self.calls == self.fail_on_call:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.inner(x)


def test_oom_retries_smaller_tiles_without_stale_tiles() -> None:
    inner = create_model("dpsr", **TINY["dpsr"]).eval()
    x = torch.rand(2, 1, 40, 40)
    clean = Upscaler(inner, 4, tile=16, overlap=8, channels_last=False).upscale_unit(x)
    # Too-big tiles: 32 -> 16. Then an OOM in the middle of an image (third tile) after two
    # tiles were already blended in: the image restarts from empty accumulators.
    for wrapper in (_OutOfMemoryAfter(inner, max_side=16), _OutOfMemoryAfter(inner, fail_on_call=3)):
        up = Upscaler(wrapper, 4, tile=32, overlap=8, channels_last=False, min_tile=8)
        out = up.upscale_unit(x)
        assert up.tile == 16
        torch.testing.assert_close(out, clean, atol=1e-6, rtol=0)


def test_oom_at_minimum_tile_raises() -> None:
    up = Upscaler(_OutOfMemoryAfter(Bicubic(4), max_side=4), 4, tile=32, min_tile=16, channels_last=False)
    with pytest.raises(torch.OutOfMemoryError):
        up.upscale_unit(torch.rand(1, 1, 40, 40))


class _RGBProbe(torch.nn.Module):
    """A 3-channel model whose channels differ: records its input, returns scaled copies."""

    image_channels = 3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen = x.clone()
        y = torch.nn.functional.interpolate(x, scale_factor=4, mode="nearest")
        return y * torch.tensor([0.5, 1.0, 1.5]).view(1, 3, 1, 1)


def test_grey_replicated_to_rgb_and_averaged_back() -> None:
    probe = _RGBProbe()
    x = torch.rand(2, 1, 8, 8) * 0.5
    out = Upscaler(probe, 4, tile=None, channels_last=False).upscale_unit(x)
    assert probe.seen.shape == (2, 3, 8, 8)
    assert torch.equal(probe.seen[:, 0], probe.seen[:, 2])
    torch.testing.assert_close(out, torch.nn.functional.interpolate(x, scale_factor=4, mode="nearest"))


@pytest.mark.parametrize("arch", ["swinir", "hat"])
def test_fp16_refused_for_window_attention(arch: str) -> None:
    d = load_state_dict(state_dict_for_export(create_model(arch, **TINY[arch])), arch)
    with pytest.raises(ValueError, match="fp16"):
        Upscaler(d, 4, precision="fp16")
    assert Upscaler(d, 4).precision == "fp32"  # CPU: fp32; CUDA: bf16


def test_upscale_slices_float_modality_values() -> None:
    up = Upscaler(Bicubic(4), 4, tile=None, channels_last=False)
    hu = np.full((3, 10, 12), 40.0, dtype=np.float32)
    out = up.upscale_slices(hu, CT_MAPPING)
    assert out.shape == (3, 40, 48) and out.dtype == np.float32
    np.testing.assert_allclose(out, 40.0, atol=1e-3)
    assert up.upscale_slices(hu[0], CT_MAPPING).shape == (40, 48)
