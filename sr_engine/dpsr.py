"""DPSR: KAIR's modified SRResNet with a noise-level-map input channel (MSRResNet_prior).

spandrel has no DPSR, so it lives here, with the exact module layout of KAIR's release
checkpoints (keys ``model.0``, ``model.1.sub.N.res.{0,2}``, pixel-shuffle stages, a bias-free last
conv) so that the official ``DPSRx4.pth`` loads strictly.  Official configuration: 4 input
channels (RGB + noise map), 96 features, 16 residual blocks, pixel-shuffle x4: 3,493,824 params.
"""
from __future__ import annotations

import math

import torch
from torch import nn


class _ResBlock(nn.Module):
    """conv-ReLU-conv with an identity skip (KAIR ``ResBlock``, mode 'CRC')."""

    def __init__(self, nc: int) -> None:
        super().__init__()
        self.res = nn.Sequential(
            nn.Conv2d(nc, nc, 3, 1, 1), nn.ReLU(inplace=True), nn.Conv2d(nc, nc, 3, 1, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.res(x)


class _Shortcut(nn.Module):
    """Global skip around the residual trunk (KAIR ``ShortcutBlock``: attribute ``sub``)."""

    def __init__(self, sub: nn.Module) -> None:
        super().__init__()
        self.sub = sub

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.sub(x)


def _upsample_factors(scale: int) -> list[int]:
    """Pixel-shuffle stages for a scale: x3 is one stage of 3, powers of two are stages of 2."""
    if scale == 3:
        return [3]
    if scale >= 2 and scale & (scale - 1) == 0:
        return [2] * int(math.log2(scale))
    raise ValueError(f"DPSR supports scales 2, 3, 4 and 8, not {scale}")


class DPSR(nn.Module):
    """DPSR super-resolver prior: image channels + one noise-level channel in, image out.

    ``forward`` accepts either the full ``in_nc`` channels (the noise map supplied by the caller,
    as in KAIR) or ``in_nc - 1`` image channels, in which case a constant map of
    ``noise_level`` (sigma on the 0-255 scale, divided by 255 as in KAIR) is appended.
    """

    def __init__(
        self,
        in_nc: int = 4,
        out_nc: int = 3,
        nc: int = 96,
        nb: int = 16,
        upscale: int = 4,
        noise_level: float = 0.0,
    ) -> None:
        super().__init__()
        self.in_nc = in_nc
        self.out_nc = out_nc
        self.nc = nc
        self.nb = nb
        self.scale = upscale
        self.noise_level = float(noise_level)
        self.image_channels = in_nc - 1
        layers: list[nn.Module] = [nn.Conv2d(in_nc, nc, 3, 1, 1)]
        trunk = [_ResBlock(nc) for _ in range(nb)] + [nn.Conv2d(nc, nc, 3, 1, 1)]
        layers.append(_Shortcut(nn.Sequential(*trunk)))
        for f in _upsample_factors(upscale):
            layers += [nn.Conv2d(nc, nc * f * f, 3, 1, 1), nn.PixelShuffle(f), nn.ReLU(inplace=True)]
        layers += [
            nn.Conv2d(nc, nc, 3, 1, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(nc, out_nc, 3, 1, 1, bias=False),
        ]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == self.in_nc - 1:
            sigma = torch.full_like(x[:, :1], self.noise_level / 255.0)
            x = torch.cat([x, sigma], dim=1)
        return self.model(x)


def dpsr_hyperparameters(state_dict: dict[str, torch.Tensor]) -> dict[str, int]:
    """Read in_nc, out_nc, nc, nb and upscale of a DPSR state dict from its tensor shapes."""
    head = state_dict["model.0.weight"]
    nc, in_nc = int(head.shape[0]), int(head.shape[1])
    nb = 1 + max(
        int(k.split(".")[3]) for k in state_dict if k.startswith("model.1.sub.") and ".res." in k
    )
    # After the trunk: every conv with a bias that widens nc -> nc*f*f is one pixel-shuffle stage.
    idx = sorted({int(k.split(".")[1]) for k in state_dict if k.startswith("model.") and k.split(".")[1].isdigit()})
    scale = 1
    for i in idx:
        if i < 2:
            continue
        w = state_dict[f"model.{i}.weight"]
        if w.shape[0] > nc:
            scale *= int(round(math.sqrt(w.shape[0] / nc)))
    out_nc = int(state_dict[f"model.{idx[-1]}.weight"].shape[0])
    return {"in_nc": in_nc, "out_nc": out_nc, "nc": nc, "nb": nb, "upscale": scale}
