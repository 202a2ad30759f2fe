"""Process memory: what this process holds (RSS), its peak, a default budget, and giving memory back.

Used by the Upscaler to fit tile size and batch into a budget (`worker.max_memory_mb`), by the
worker to hand memory back after a job, and by bench/sr/memory.py to measure peaks. Linux /proc
is read where present; elsewhere the functions degrade to `resource` figures or do nothing.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import os
import resource
import sys
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

MIB = 1 << 20
# Default budget: half the memory this process may use (cgroup limit or RAM), at most this much.
# 4 GiB holds chunks of 4 whole 512² slices of the fast CT model (peak 1.7 GiB) and 2 of 1024²
# (2.5 GiB) next to torch's ~1 GiB of libraries (BENCHMARKS.md, "Memory"); bigger inputs or
# heavier models are tiled to fit instead of growing.
DEFAULT_BUDGET_CAP_MB = 4096
DEFAULT_BUDGET_SHARE = 0.5
MIN_BUDGET_MB = 1024

_STATM = Path("/proc/self/statm")
_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes() -> int:
    """Resident set size of this process now (anonymous + file-backed pages), bytes."""
    try:
        return int(_STATM.read_text().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return peak_rss_bytes()  # no /proc: the peak is the best upper bound there is


def peak_rss_bytes() -> int:
    """Peak RSS of this process (VmHWM: since start or since the last reset_peak_rss), bytes."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    # ru_maxrss is KiB on Linux, bytes on macOS.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux ≥ 4.0, `echo 5 > /proc/self/clear_refs`); False if not possible."""
    try:
        _CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


def machine_memory_bytes() -> int:
    """Memory this process may use: the cgroup's limit when there is one, else physical RAM."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for path in (Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory/memory.limit_in_bytes")):
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text.isdigit() and 0 < int(text) < total:  # "max" or a huge number: no limit
            return int(text)
    return total


def default_budget_mb() -> int:
    """The default `worker.max_memory_mb`: half of machine_memory_bytes(), between 1 and 4 GiB."""
    share = int(machine_memory_bytes() * DEFAULT_BUDGET_SHARE) // MIB
    return max(MIN_BUDGET_MB, min(DEFAULT_BUDGET_CAP_MB, share))


def _load_malloc_trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim  # glibc only; musl has no malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


_MALLOC_TRIM = _load_malloc_trim()


def release_memory() -> int:
    """Give freed memory back to the OS: Python garbage, torch's CUDA cache, glibc's free lists.

    glibc keeps freed heap pages (the many mid-sized tensors of a forward pass) for reuse, so a
    worker's RSS stays at its job's peak without `malloc_trim` (measured: BENCHMARKS.md, "Memory").
    Returns the RSS given back, in bytes (0 when it grew meanwhile).
    """
    before = rss_bytes()
    gc.collect()
    torch = sys.modules.get("torch")  # never import torch just to release memory
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)
    return max(0, before - rss_bytes())


def measure_peak(fn: Callable[[], object]) -> int:
    """Peak RSS growth while `fn()` runs, bytes (freed memory is given back first, so it counts).

    Uses VmHWM reset through /proc/self/clear_refs; where that is not allowed, the growth of the
    lifetime peak, which is 0 when an earlier peak was higher (callers then fall back to estimates).
    """
    release_memory()
    base = rss_bytes()
    if not reset_peak_rss():
        base = max(base, peak_rss_bytes())
    fn()
    return max(0, peak_rss_bytes() - base)
