"""Validation PSNR/SSIM on held-out slices, with the engine's evaluation protocol.

The protocol is `srnode evaluate`'s, imported (sr_engine.evaluate.evaluate_slices): LR =
antialiased bicubic x`scale` of the HR slice in HU, SR = the model through the engine's Upscaler,
PSNR/SSIM on HU clipped to [-1024, 3071]. Bicubic is the engine's `Bicubic` module.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from sr_engine.evaluate import Slice, evaluate_slices, summarize
from sr_engine.intensity import IntensityMapping
from sr_engine.interpolate import Bicubic
from sr_engine.upscale import Upscaler
from training.slice_cache import CachedSeries


@dataclass(frozen=True)
class ValSet:
    """Fixed HR validation crops in modality units, [N, 1, H, W] float32."""

    hr: torch.Tensor

    @property
    def n(self) -> int:
        """Number of crops."""
        return int(self.hr.shape[0])


def make_val_set(series: Sequence[CachedSeries], max_slices: int = 8, crop: int | None = 256,
                 scale: int = 4) -> ValSet:
    """Evenly spaced slices of every series, centre-cropped to `crop` (None: whole slice)."""
    per_series = max(1, max_slices // max(1, len(series)))
    crops: list[np.ndarray] = []
    for s in series:
        vol = s.volume()
        idx = np.unique(np.linspace(0, vol.shape[0] - 1, min(per_series, vol.shape[0])).round().astype(int))
        for z in idx:
            sl = np.asarray(vol[z], dtype=np.float32)
            if crop is not None and min(sl.shape) > crop:
                y0, x0 = (sl.shape[0] - crop) // 2, (sl.shape[1] - crop) // 2
                sl = sl[y0:y0 + crop, x0:x0 + crop]
            h, w = (sl.shape[0] // scale) * scale, (sl.shape[1] // scale) * scale
            crops.append(sl[:h, :w])
    if not crops:
        raise ValueError("validation set is empty")
    return ValSet(torch.from_numpy(np.stack(crops))[:, None])


def _upscaler(model: nn.Module, scale: int, device: torch.device | str,
              tile: int | None) -> Callable[[np.ndarray, IntensityMapping], np.ndarray]:
    return Upscaler(model, scale, device=device, tile=tile, batch=2,
                    channels_last=False).upscale_slices


@torch.no_grad()
def evaluate_model(model: nn.Module | None, val: ValSet, mapping: IntensityMapping, scale: int,
                   device: torch.device | str = "cpu", tile: int | None = 128) -> dict[str, float]:
    """Mean PSNR/SSIM (HU range) of `model` on `val`; model None means the bicubic baseline."""
    module = Bicubic(scale) if model is None else model
    was_training = module.training
    slices = [Slice(f"val{i}", val.hr[i, 0].numpy()) for i in range(val.n)]
    rows = evaluate_slices(slices, {"m": _upscaler(module, scale, device, tile)}, scale,
                           batch=2, mapping=mapping)
    module.train(was_training)
    stats = summarize(rows)["m"]
    return {"psnr": stats["psnr_hu"]["mean"], "ssim": stats["ssim_hu"]["mean"]}
