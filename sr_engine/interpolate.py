"""Classical interpolators as modules (the `bicubic` and `lanczos` registry models)."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class Bicubic(nn.Module):
    """Bicubic upscaling (PyTorch's a=-0.75 kernel, half-pixel centres), grey in, grey out."""

    image_channels = 1

    def __init__(self, scale: int = 4) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=self.scale, mode="bicubic", align_corners=False)


def _lanczos(x: torch.Tensor, a: int) -> torch.Tensor:
    out = torch.sinc(x) * torch.sinc(x / a)
    return torch.where(x.abs() < a, out, torch.zeros_like(out))


def lanczos_matrix(n_in: int, scale: int, a: int = 3) -> torch.Tensor:
    """[n_in*scale, n_in] resampling matrix of a Lanczos-`a` kernel, edges replicated, rows sum to 1."""
    n_out = n_in * scale
    centres = (torch.arange(n_out, dtype=torch.float64) + 0.5) / scale - 0.5
    taps = torch.arange(-a + 1, a + 1, dtype=torch.float64)
    src = torch.floor(centres)[:, None] + taps[None, :]
    weights = _lanczos(centres[:, None] - src, a)
    weights = weights / weights.sum(dim=1, keepdim=True)
    idx = src.clamp(0, n_in - 1).long()
    m = torch.zeros(n_out, n_in, dtype=torch.float64)
    m.scatter_add_(1, idx, weights)
    return m


class Lanczos(nn.Module):
    """Separable Lanczos-3 upscaling, grey in, grey out."""

    image_channels = 1

    def __init__(self, scale: int = 4, a: int = 3) -> None:
        super().__init__()
        self.scale = scale
        self.a = a

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        my = lanczos_matrix(h, self.scale, self.a).to(x.device, torch.float32)
        mx = lanczos_matrix(w, self.scale, self.a).to(x.device, torch.float32)
        return torch.einsum("yh,nchw,xw->ncyx", my, x.float(), mx)


INTERPOLATORS: dict[str, type[nn.Module]] = {"bicubic": Bicubic, "lanczos": Lanczos}


def lanczos_upscale(
    values: np.ndarray, scale: int, clip: tuple[float, float] | None = None, a: int = 3
) -> np.ndarray:
    """Float [H, W] or [N, H, W] values → the `lanczos` model's output, untiled, float32.

    `clip`: the intensity range a model sees (e.g. CT's [-1024, 3071]); the input and output are
    clipped to it so that lanczos is compared with an SR output on the same terms.
    """
    x = np.asarray(values, dtype=np.float32)
    if clip is not None:
        x = np.clip(x, *clip)
    squeeze = x.ndim == 2
    t = torch.from_numpy(np.ascontiguousarray(x[None] if squeeze else x)).unsqueeze(1)
    with torch.inference_mode():
        out = Lanczos(scale, a)(t)[:, 0].numpy()
    if clip is not None:
        out = np.clip(out, *clip)
    return out[0] if squeeze else out
