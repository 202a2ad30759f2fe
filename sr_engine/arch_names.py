"""The engine's architecture names, without importing torch (configuration checks use them)."""
from __future__ import annotations

INTERPOLATOR_ARCHS: tuple[str, ...] = ("bicubic", "lanczos")
# The paper's five, then `compact` (Real-ESRGAN's SRVGGNetCompact): the fast CPU architecture.
NETWORK_ARCHS: tuple[str, ...] = ("realesrgan", "bsrgan", "dpsr", "swinir", "hat", "compact")
KNOWN_ARCHS: tuple[str, ...] = INTERPOLATOR_ARCHS + NETWORK_ARCHS
