"""Tiled, batched inference of a super-resolution module on grey medical slices.

Input is [N, 1, H, W] in [0, 1] (see sr_engine.intensity).  3-channel models get the grey slice
replicated to RGB and their output averaged back.  Overlapping tiles are blended with linear
ramps so that tiled output matches untiled output; an out-of-memory error restarts the whole
image with smaller tiles, so a half-written (stale) tile can never reach the result.

With a memory budget (`max_memory_mb`, the worker's `worker.max_memory_mb`) tile size and batch
are planned before inference from the model's activation memory per input pixel (traced on the
meta device, so at no compute cost) instead of learning it from an out-of-memory error: whole
slices in the largest batch that fits, else the fewest balanced tiles (see `plan_memory`).
"""
from __future__ import annotations

import logging
import math
import threading
import weakref
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from spandrel import ImageModelDescriptor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from sr_engine.backends import build_runner, choose_runtime
from sr_engine.intensity import IntensityMapping
from sr_engine.memory import MIB, measure_peak, release_memory, rss_bytes

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


# Measured peak RSS growth of a forward pass over the meta-traced tensor bytes (bench/sr/memory.py,
# BENCHMARKS.md "Memory"): 1.45-1.56 for RRDB-6 (ONNX Runtime, torch), ~1.5 for Compact. The rest
# is oneDNN's blocked-layout copies and the allocator; the planner uses the upper bound.
ACTIVATION_OVERHEAD = 1.6
# Bytes per upscaled pixel of a slice the caller keeps while the next batch runs (the worker's
# writer thread: float32 values 4, 16-bit PixelData 2, encoded bytes ≤ 2) ...
HELD_BYTES_PER_PX = 8
# ... plus one slice's derive temporaries (float64 quantisation in dicom_node.derive.pixels).
DERIVE_BYTES_PER_PX = 16
# Round the measured baseline up to this, so a few MiB of noise between two processes do not
# change the plan (and the pixels, for a tiled plan) of the same series.
_BASELINE_STEP = 128 * MIB
_TILE_STEP = 16  # tile sizes are multiples of this (fewer distinct shapes for the runtimes)


class _LiveBytes(TorchDispatchMode):
    """Peak bytes of the tensors alive at once while a forward runs (views and in-place results
    are not new memory). Used on the meta device: shapes and lifetimes only, no arithmetic."""

    def __init__(self) -> None:
        super().__init__()
        self.alive: list[tuple[weakref.ref[torch.Tensor], int]] = []
        self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {id(t) for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and id(t) not in inputs and not t._is_view():
                self.alive.append((weakref.ref(t), t.untyped_storage().nbytes()))
        self.alive = [(ref, n) for ref, n in self.alive if ref() is not None]
        self.peak = max(self.peak, sum(n for _, n in self.alive))
        return out


def traced_activation_bytes(module: torch.nn.Module, channels: int, batch: int, h: int, w: int) -> int:
    """Peak bytes of the tensors one fp32 forward of `module` on [batch, 1, h, w] keeps alive at once
    (grey→model→grey included, weights not), from a run on the meta device: instant at any size."""
    meta = {k: v.to("meta") for k, v in [*module.named_parameters(), *module.named_buffers()]}
    x = torch.empty(batch, 1, h, w, device="meta")
    live = _LiveBytes()
    with torch.inference_mode(), live:
        y = torch.func.functional_call(module, meta, (grey_to_model(x, channels),))
        y = model_to_grey(y.float())
        del y
    return live.peak


@dataclass(frozen=True)
class MemoryPlan:
    """How to run slices of one size within a memory budget.

    `tile`: LR tile size (None: whole slices); `batch`: slices per forward pass; `estimate`:
    predicted working memory (bytes) of the plan; `fits`: False when even one slice at the
    smallest tile exceeds the budget (it then runs at the smallest tile anyway, with a warning).
    """

    tile: int | None
    batch: int
    estimate: int
    fits: bool = True


def balanced_tile(length: int, max_tile: int, overlap: int, step: int = _TILE_STEP) -> int:
    """The smallest tile (multiple of `step`, ≤ max_tile where possible) that covers `length` in as
    few tiles as `max_tile` allows: 512 px with at most 440 px tiles → 2 tiles of 272, not 2 of 432."""
    if length <= max_tile:
        return length
    count = math.ceil((length - overlap) / max(1, max_tile - overlap))
    tile = math.ceil((length + (count - 1) * overlap) / count)
    return min(length, math.ceil(tile / step) * step)


def plan_memory(h: int, w: int, scale: int, bytes_per_pixel: float, working_bytes: int, max_batch: int,
                held_slices: int = 0, max_tile: int | None = None, min_tile: int = 32,
                overlap: int = 16) -> MemoryPlan:
    """Tile size and batch for [*, 1, h, w] slices so that the predicted working memory fits
    `working_bytes` (the budget less what the process holds without a job).

    Predicted for a batch of b slices: `bytes_per_pixel` (activations per LR pixel, overhead
    included) × pixels of a pass, plus the result buffers of the b slices (float32 output, its
    mapping back to modality values and a temporary), plus the previous chunk the caller keeps
    meanwhile (min(b, `held_slices`) upscaled slices and one slice's derive temporaries: the
    worker's writer thread). Callers pass chunks of `batch` slices (`Upscaler.chunk_size`), so
    the buffers shrink with the batch and a 1024² or larger slice still fits a small budget.
    Whole slices in the largest batch that fits come first; else the fewest balanced tiles.
    """
    out_px = h * w * scale * scale

    def buffers(b: int) -> int:
        io = b * (out_px + h * w) * 4 * 3
        kept = min(b, held_slices)
        return io + kept * out_px * HELD_BYTES_PER_PX + (out_px * DERIVE_BYTES_PER_PX if kept else 0)

    whole = bytes_per_pixel * h * w
    if max_tile is None or (h <= max_tile and w <= max_tile):
        for b in range(max_batch, 0, -1):
            if buffers(b) + b * whole <= working_bytes:
                return MemoryPlan(None, b, int(buffers(b) + b * whole))
    # Tiled: the tiled pass's accumulators (output per slice, one weight map, the normalised
    # output per slice) come on top.
    fixed = buffers(1) + out_px * 4 * 3
    room = working_bytes - fixed
    cap = max(h, w) if max_tile is None else max_tile
    limit = min(cap, int(math.sqrt(max(room, 0) / bytes_per_pixel)) // _TILE_STEP * _TILE_STEP)
    if limit < min_tile:
        return MemoryPlan(min_tile, 1, int(fixed + bytes_per_pixel * min_tile * min_tile), fits=False)
    tile = max(balanced_tile(h, limit, overlap), balanced_tile(w, limit, overlap))
    per_pass = bytes_per_pixel * min(tile, h) * min(tile, w)
    # More slices per pass only where their buffers and tiles fit too (tiles already under max_tile).
    for b in range(max_batch, 0, -1):
        estimate = buffers(b) + out_px * 4 * (2 * b + 1) + b * per_pass
        if estimate <= working_bytes or b == 1:
            # A tile rounded up to the 16 px step may overshoot by a little: say so, run anyway.
            return MemoryPlan(tile, b, int(estimate), fits=estimate <= working_bytes)
    raise AssertionError("unreachable")


class Upscaler:
    """Runs `module` (an nn.Module or a spandrel descriptor) tile by tile on [N, 1, H, W] in [0, 1].

    `runtime`: "auto" (ONNX Runtime for fp32 CPU inference of RRDBNet/DPSR descriptors, else torch),
    "torch", or "onnxruntime"; an ONNX Runtime export snapshots the weights at construction.

    `max_memory_mb`: the process's memory budget (RSS, MiB). When set, each slice size gets a
    `MemoryPlan` (tile ≤ `tile`, batch ≤ `batch`) from what the process holds at its first plan
    (libraries, models: the "baseline"), shared by `concurrent` jobs, less `held_slices` upscaled
    slices the caller keeps meanwhile. On CUDA the activations are planned against the GPU's memory.
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
        max_memory_mb: int | None = None,
        held_slices: int = 0,
        concurrent: int = 1,
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
        self.max_memory_mb = max_memory_mb
        self.held_slices = max(0, int(held_slices))
        self.concurrent = max(1, int(concurrent))
        self._plans: dict[tuple[int, int], MemoryPlan] = {}
        self._bytes_per_pixel: float | None = None
        self._baseline: int | None = None
        self._plan_lock = threading.Lock()
        if precision == "fp16" and (self.arch in _NO_FP16 or type(module).__name__ in _NO_FP16):
            raise ValueError(f"fp16 overflows in {self.arch or type(module).__name__}; use bf16 or fp32")
        if precision == "auto":
            precision = "bf16" if self.device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
        self.precision = precision
        module = module.eval().to(self.device)
        self._eager = module  # what the memory planner traces, whatever runtime executes it
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

    def _autocast(self):
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

    # -- memory planning -----------------------------------------------------------------------
    def bytes_per_pixel(self) -> float:
        """Working memory of a forward pass per LR input pixel and slice (bytes, overhead included).

        Traced once on the meta device at a 64 px probe (linear in pixels for these networks);
        a module that cannot be traced is measured instead (peak RSS of a real 64 px pass, which
        also counts fixed costs, so it errs on the safe side).
        """
        with self._plan_lock:
            if self._bytes_per_pixel is None:
                probe = max(64, self.min_size)
                try:
                    traced = traced_activation_bytes(self._eager, self.channels, 1, probe, probe)
                    self._bytes_per_pixel = ACTIVATION_OVERHEAD * traced / probe ** 2
                except Exception as exc:  # noqa: BLE001 - any op without a meta kernel: measure instead
                    log.info("cannot trace %s on the meta device (%s); measuring a %d px pass",
                             self.arch or type(self._eager).__name__, str(exc).splitlines()[0][:200], probe)
                    x = torch.rand(1, 1, probe, probe)
                    with torch.inference_mode():
                        peak = measure_peak(lambda: self._upscale_tiled(x, None))
                    self._bytes_per_pixel = max(float(peak), 1.0) / probe ** 2
            return self._bytes_per_pixel

    def working_bytes(self) -> int:
        """Memory one job may use for inference: (budget − baseline) / concurrent jobs; on CUDA,
        80 % of the GPU less what the weights take."""
        if self.device.type == "cuda":
            total = torch.cuda.get_device_properties(self.device).total_memory
            return int(total * 0.8) - torch.cuda.memory_allocated(self.device)
        with self._plan_lock:
            if self._baseline is None:
                # Libraries, weights, runtime sessions: measured once, after giving freed memory back.
                release_memory()
                self._baseline = math.ceil(rss_bytes() / _BASELINE_STEP) * _BASELINE_STEP
            baseline = self._baseline
        return (int(self.max_memory_mb or 0) * MIB - baseline) // self.concurrent

    def plan(self, h: int, w: int) -> MemoryPlan | None:
        """The memory plan for h×w slices (None without a budget); computed once per size."""
        if self.max_memory_mb is None:
            return None
        key = (h, w)
        if key not in self._plans:
            plan = plan_memory(h, w, self.scale, self.bytes_per_pixel(), self.working_bytes(), self.batch,
                               held_slices=self.held_slices, max_tile=self.tile, min_tile=self.min_tile,
                               overlap=self.overlap)
            how = "whole slices" if plan.tile is None else f"{plan.tile} px tiles"
            (log.info if plan.fits else log.warning)(
                "memory plan for %dx%d slices: %s, batch %d, ~%d MiB working memory (budget %d MiB, "
                "baseline %d MiB%s)", h, w, how, plan.batch, plan.estimate // MIB, self.max_memory_mb,
                (self._baseline or 0) // MIB, "" if plan.fits else "; does NOT fit: raise worker.max_memory_mb")
            self._plans[key] = plan
        return self._plans[key]

    def chunk_size(self, h: int, w: int) -> int:
        """Slices a caller should pass per call for h×w slices: the plan's batch (its result
        buffers are counted per batch), else `batch`."""
        plan = self.plan(h, w)
        return plan.batch if plan is not None else self.batch

    @torch.inference_mode()
    def upscale_unit(self, x: torch.Tensor) -> torch.Tensor:
        """[N, 1, H, W] in [0, 1] -> [N, 1, sH, sW] in [0, 1], `batch` slices at a time (or as planned)."""
        if x.dim() != 4 or x.shape[1] != 1:
            raise ValueError(f"expected [N, 1, H, W], got {tuple(x.shape)}")
        x = x.float()
        n, _, h, w = x.shape
        plan = self.plan(h, w)
        batch, tile = (plan.batch, plan.tile) if plan is not None else (self.batch, self.tile)
        # One result buffer filled in place: no list of chunks concatenated (a second copy) at the end.
        result = torch.empty(n, 1, h * self.scale, w * self.scale)
        for k in range(0, n, batch):
            chunk = x[k: k + batch]
            while True:
                try:
                    result[k: k + chunk.shape[0]] = self._upscale_tiled(chunk, tile)
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
                    if plan is not None:
                        self._plans[(h, w)] = plan = MemoryPlan(tile, 1, plan.estimate, plan.fits)
                        batch = 1  # the chunks not started yet; this one goes on as a whole
                    else:
                        self.tile = tile
            if self.progress:
                self.progress(chunk.shape[0])
        return result

    def upscale_slices(self, values: np.ndarray, mapping: IntensityMapping) -> np.ndarray:
        """Float32 modality values [N, H, W] (or [H, W]) -> upscaled modality values, float32."""
        arr = np.asarray(values, dtype=np.float32)
        squeeze = arr.ndim == 2
        if squeeze:
            arr = arr[None]
        unit = torch.from_numpy(mapping.to_unit(arr)).unsqueeze(1)
        out = mapping.from_unit(self.upscale_unit(unit)[:, 0].numpy())
        return out[0] if squeeze else out
