"""Model registry: built-ins, config entries, verified loading, the object the pipeline calls."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from sr_engine import registry
from sr_engine.archs import CheckpointError
from sr_engine.intensity import CT_MAPPING
from sr_engine.model_entry import IntensityConfig, ModelEntry

ANIME = "RealESRGAN_x4plus_anime_6B.pth"


def test_builtins_resolve_and_run() -> None:
    for name in ("bicubic", "lanczos"):
        m = registry.load(registry.resolve(name))
        out = m.upscale(np.full((2, 8, 8), 40.0, dtype=np.float32), CT_MAPPING)
        assert out.shape == (2, 32, 32)
        np.testing.assert_allclose(out, 40.0, atol=1e-3)
        assert m.checkpoint_sha256 == registry.builtin_digest(name) and len(m.checkpoint_sha256) == 64
    with pytest.raises(registry.UnknownModelError, match="unknown model 'nope'.*bicubic"):
        registry.resolve("nope")


def test_config_entry_loads_verified(weights_dir: Path, weights_sha256: dict[str, str]) -> None:
    entry = ModelEntry(arch="realesrgan", weights=weights_dir / ANIME, sha256=weights_sha256[ANIME],
                       intensity=IntensityConfig(mode="fixed", low=-200, high=300))
    spec = registry.resolve("anime", {"anime": entry})
    assert spec.arch == "realesrgan" and spec.scale == 4
    m = registry.load(spec, tile=32, overlap=8)
    assert m.checkpoint_sha256 == weights_sha256[ANIME] and m.parameters == 4_467_779
    assert (m.mapping("CT").low, m.mapping("CT").high) == (-200, 300)
    out = m.upscale(np.zeros((1, 12, 12), dtype=np.float32), m.mapping("CT"))
    assert out.shape == (1, 48, 48) and out.dtype == np.float32


def test_wrong_sha256_or_missing_weights_refused(weights_dir: Path) -> None:
    spec = registry.ModelSpec("anime", "realesrgan", weights_dir / ANIME, sha256="0" * 64)
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        registry.load(spec)
    with pytest.raises(CheckpointError, match="no weights"):
        registry.load(registry.resolve("hat"))
    with pytest.raises(CheckpointError, match="expected architecture|missing key"):
        registry.load(dataclasses.replace(spec, arch="dpsr", sha256=None))
    with pytest.raises(CheckpointError, match="x4.*x2"):
        registry.load(dataclasses.replace(spec, sha256=None, scale=2))
