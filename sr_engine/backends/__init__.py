"""Which runtime executes a model on CPU: eager torch, or the same network exported to ONNX Runtime.

Measured on the project's 2-core AVX-512 CPU (BENCHMARKS.md, "SR engine"): ONNX Runtime runs the
convolutional models faster than eager torch at the same fp32 precision (outputs within ~0.01 HU),
so `runtime="auto"` picks it on CPU for fp32; CUDA, bf16/fp16 and the window-attention models
(SwinIR, HAT: not traced/verified here) stay on torch.  A runtime that is not installed or whose
export fails falls back to torch with one warning line.
"""
from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable

import torch

log = logging.getLogger(__name__)

RUNTIMES: tuple[str, ...] = ("auto", "torch", "onnxruntime")
# The fp32 CPU winner in the same-run benchmark (bench/sr/latency.py).
AUTO_CPU_RUNTIME = "onnxruntime"
# Python packages each runtime needs (the TorchScript ONNX exporter needs `onnx` too).
_PACKAGES: dict[str, tuple[str, ...]] = {"torch": (), "onnxruntime": ("onnxruntime", "onnx")}
# spandrel architecture ids whose export is tested to match eager fp32 (tests/sr_engine/test_backends.py).
# Compact (the fast CT model): ONNX Runtime 2.3 s vs eager torch 4.1 s per 512² slice on one
# thread, outputs within 1.2e-7 of [0, 1] (BENCHMARKS.md, "CPU throughput, full-size series").
EXPORTABLE_ARCHS: frozenset[str] = frozenset({"ESRGAN", "DPSR", "Compact"})

Runner = Callable[[torch.Tensor], torch.Tensor]


def available(runtime: str) -> bool:
    """Whether the Python packages behind `runtime` can be imported here."""
    try:
        return all(importlib.util.find_spec(p) is not None for p in _PACKAGES[runtime])
    except (ImportError, ValueError):  # a module set to None in sys.modules raises ValueError
        return False


def choose_runtime(requested: str, device: torch.device, precision: str, arch: str | None) -> str:
    """The runtime to use for `requested` ("auto", "torch", "onnxruntime") on this device/precision."""
    if requested not in RUNTIMES:
        raise ValueError(f"unknown runtime {requested!r}; known: {', '.join(RUNTIMES)}")
    if requested == "torch":
        return "torch"
    if device.type != "cpu" or precision != "fp32":
        if requested != "auto":
            log.warning("runtime %s runs fp32 on CPU only; using torch for %s %s", requested, device.type, precision)
        return "torch"
    if requested == "auto":
        if arch not in EXPORTABLE_ARCHS:
            return "torch"
        requested = AUTO_CPU_RUNTIME
    if not available(requested):
        log.warning("runtime %s is not installed; using torch", requested)
        return "torch"
    return requested


def build_runner(module: torch.nn.Module, runtime: str, channels: int, threads: int | None = None) -> Runner:
    """A callable [B, C, h, w] float32 -> [B, C', sh, sw] float32 running `module` on `runtime`."""
    if runtime == "torch":
        return module
    if runtime == "onnxruntime":
        from sr_engine.backends.ort_runner import OrtRunner

        return OrtRunner(module, channels, threads or torch.get_num_threads())
    raise ValueError(f"unknown runtime {runtime!r}")
