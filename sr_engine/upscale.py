"""Tiled, batched inference of a super-resolution module on grey medical slices.

Input is [N, 1, H, W] in [0, 1] (see sr_engine.intensity).  3-channel models get the grey slice
replicated to RGB and their output averaged back.  Overlapping tiles are blended with linear
ramps so that tiled output matches untiled output; an out-of-memory error restarts the whole
image with smaller tiles, so a half-written (stale) tile can never reach the result.
"""
from __future__ import annotations

import logging
from contextlib import nullcontext
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from spandrel import ImageModelDescriptor

from sr_engine.backends import build_runner, choose_runtime
from sr_engine.intensity import IntensityMapping

log = logging.getLogger(__name__)

# Window-attention models overflow in fp16; they run fp32 or bf16 only.
_NO_FP16 = ("SwinIR", "HAT")


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def grey_to_model(x: torch.Tensor, channels: int) -> torch.Tensor:
    """Grey [B, 1, h, w] → the model's input: replicated to `channels` for RGB models."""
    return x.expand(-1, channels, -1, -1) if channels != 1 else x


def model_to_grey(y: torch.Tensor) -> torch.Tensor:
    """A model's output → grey [B, 1, H, W]: RGB channels averaged (they agree for grey input)."""
    return y.mean(dim=1, keepdim=True) if y.shape[1] != 1 else y


def image_channels(module: torch.nn.Module) -> int:
    """Image channels a module expects (1 grey or 3 RGB), read from its attributes or first conv."""
    if hasattr(module, "image_channels"):
        return int(module.image_channels)
    if hasattr(module, "in_nc") and hasattr(module, "shuffle_factor"):  # spandrel RRDBNet
        return int(module.in_nc) // (int(module.shuffle_factor or 1) ** 2)
    for m in module.modules():
        if isinstance(m, torch.nn.Conv2d):
            return int(m.in_channels)
    raise ValueError(f"cannot tell the input channels of {type(module).__name__}")


def _ramp(length: int, fade_start: int, fade_end: int) -> torch.Tensor:
    """1-D blending weight: linear ramps of `fade_start`/`fade_end` samples at the ends, 1 inside."""
    w = torch.ones(length, dtype=torch.float32)
    if fade_start > 0:
        w[:fade_start] = (torch.arange(fade_start, dtype=torch.float32) + 0.5) / fade_start
    if fade_end > 0:
        w[length - fade_end:] = torch.minimum(
            w[length - fade_end:], ((torch.arange(fade_end, 0, -1, dtype=torch.float32)) - 0.5) / fade_end
        )
    return w


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of size `tile` covering [0, length) with at least `overlap` overlap."""
    if length <= tile:
        return [0]
    step = max(1, tile - overlap)
    starts = list(range(0, length - tile, step))
    starts.append(length - tile)
    return starts


class Upscaler:
    """Runs `module` (an nn.Module or a spandrel descriptor) tile by tile on [N, 1, H, W] in [0, 1].

    `runtime`: "auto" (ONNX Runtime for fp32 CPU inference of RRDBNet/DPSR descriptors, else torch),
    "torch", or "onnxruntime"; an ONNX Runtime export snapshots the weights at construction.
    """

    def __init__(
        self,
        module: torch.nn.Module | ImageModelDescriptor,
        scale: int,
        device: str | torch.device = "cpu",
        tile: int | None = 256,
        overlap: int = 16,
        batch: int = 4,
        precision: str = "auto",
        channels_last: bool | None = None,
        compile: bool = False,
        min_tile: int = 32,
        runtime: str = "auto",
        progress: Callable[[int], None] | None = None,
    ) -> None:
        self.arch = None
        self.min_size = 1
        if isinstance(module, ImageModelDescriptor):
            self.arch = str(module.architecture.id)
            self.min_size = max(1, module.size_requirements.minimum)
            self.channels = module.input_channels
            module = module.model
        else:
            self.channels = image_channels(module)
        self.device = torch.device(device)
        self.scale = int(scale)
        self.tile = tile
        self.overlap = int(overlap)
        self.batch = max(1, int(batch))
        self.min_tile = min_tile
        self.progress = progress
        if precision == "fp16" and (self.arch in _NO_FP16 or type(module).__name__ in _NO_FP16):
            raise ValueError(f"fp16 overflows in {self.arch or type(module).__name__}; use bf16 or fp32")
        if precision == "auto":
            precision = "bf16" if self.device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
        self.precision = precision
        module = module.eval().to(self.device)
        # "auto": ONNX Runtime for fp32 on CPU where it is measured faster and exact, else torch.
        if compile and runtime == "auto":
            runtime = "torch"
        self.runtime = choose_runtime(runtime, self.device, precision, self.arch)
        if self.runtime != "torch":
            try:
                self.module: Callable[[torch.Tensor], torch.Tensor] = build_runner(module, self.runtime, self.channels)
                self.channels_last = False
                return
            except Exception as exc:  # noqa: BLE001 - any export/runtime failure: eager torch still works
                log.warning("runtime %s unavailable for %s (%s); using torch",
                            self.runtime, self.arch or type(module).__name__, str(exc).splitlines()[0][:200])
                self.runtime = "torch"
        if channels_last is None:
            # Measured (BENCHMARKS.md): NHWC helps CUDA and oneDNN bf16, but slows fp32 convs on CPU.
            channels_last = self.device.type == "cuda" or precision == "bf16"
        if channels_last:
            module = module.to(memory_format=torch.channels_last)
        self.channels_last = channels_last
        self.module = torch.compile(module) if compile else module

    def _autocast(self):  # noqa: ANN202 - context manager
        if self.precision == "fp32":
            return nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        """One forward pass on a [B, 1, h, w] tile: pad to the minimum size, RGB in/out, clamp."""
        h, w = x.shape[-2:]
        ph, pw = max(0, self.min_size - h), max(0, self.min_size - w)
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="replicate")
        x = grey_to_model(x, self.channels).to(self.device)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with self._autocast():
            y = self.module(x)
        y = model_to_grey(y.float())
        return y[..., : h * self.scale, : w * self.scale].clamp_(0, 1)

    def _upscale_tiled(self, x: torch.Tensor, tile: int | None) -> torch.Tensor:
        n, _, h, w = x.shape
        s = self.scale
        if tile is None or (h <= tile and w <= tile):
            return self._run(x).cpu()
        out = torch.zeros(n, 1, h * s, w * s)
        weight = torch.zeros(1, 1, h * s, w * s)
        ys, xs = tile_starts(h, tile, self.overlap), tile_starts(w, tile, self.overlap)
        for i, y0 in enumerate(ys):
            th = min(tile, h - y0)
            # Fade only where a neighbouring tile overlaps; image borders keep full weight.
            top = (ys[i - 1] + tile - y0) * s if i > 0 else 0
            bottom = (y0 + th - ys[i + 1]) * s if i + 1 < len(ys) else 0
            wy = _ramp(th * s, top, bottom)
            for j, x0 in enumerate(xs):
                tw = min(tile, w - x0)
                left = (xs[j - 1] + tile - x0) * s if j > 0 else 0
                right = (x0 + tw - xs[j + 1]) * s if j + 1 < len(xs) else 0
                wx = _ramp(tw * s, left, right)
                win = torch.outer(wy, wx)[None, None]
                y = self._run(x[..., y0: y0 + th, x0: x0 + tw]).cpu()
                out[..., y0 * s: (y0 + th) * s, x0 * s: (x0 + tw) * s] += y * win
                weight[..., y0 * s: (y0 + th) * s, x0 * s: (x0 + tw) * s] += win
        return out / weight

    @torch.inference_mode()
    def upscale_unit(self, x: torch.Tensor) -> torch.Tensor:
        """[N, 1, H, W] in [0, 1] -> [N, 1, sH, sW] in [0, 1], `batch` slices at a time."""
        if x.dim() != 4 or x.shape[1] != 1:
            raise ValueError(f"expected [N, 1, H, W], got {tuple(x.shape)}")
        x = x.float()
        outs = []
        for k in range(0, x.shape[0], self.batch):
            chunk = x[k: k + self.batch]
            tile = self.tile
            while True:
                try:
                    outs.append(self._upscale_tiled(chunk, tile))
                    break
                except (torch.OutOfMemoryError, RuntimeError) as exc:
                    if not _is_oom(exc):
                        raise
                    if self.device.type == "cuda":
                        torch.cuda.empty_cache()
                    current = tile or max(chunk.shape[-2:])
                    if current // 2 < self.min_tile:
                        raise
                    # Start this chunk over from empty accumulators with half-size tiles.
                    tile = current // 2
                    log.warning("out of memory; retrying with %dpx tiles", tile)
                    self.tile = tile
            if self.progress:
                self.progress(chunk.shape[0])
        return torch.cat(outs)

    def upscale_slices(self, values: np.ndarray, mapping: IntensityMapping) -> np.ndarray:
        """Float32 modality values [N, H, W] (or [H, W]) -> upscaled modality values, float32."""
        arr = np.asarray(values, dtype=np.float32)
        squeeze = arr.ndim == 2
        if squeeze:
            arr = arr[None]
        unit = torch.from_numpy(mapping.to_unit(arr)).unsqueeze(1)
        out = mapping.from_unit(self.upscale_unit(unit)[:, 0].numpy())
        return out[0] if squeeze else out
