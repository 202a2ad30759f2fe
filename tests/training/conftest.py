"""Fixtures for the training tests: modest threads, the CT series, a tiny preset."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from training.presets import Preset, get_preset

# A tiny RRDBNet (same code path as RealESRGAN x4plus, ~0.2M parameters): fast on 2 CPU cores.
TINY_ARCH = dict(num_filters=8, num_blocks=1)


@pytest.fixture(autouse=True, scope="session")
def _modest_threads() -> None:
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def ct_by_name(ct_dirs: list[Path]) -> dict[str, Path]:
    """The three CT series folders by a short name: cptac, lung, ge."""
    names = {"cptac": "cptac-lscc", "lung": "lung-pet-ct-dx", "ge": "ge-head"}
    return {k: next(d for d in ct_dirs if d.name.startswith(v)) for k, v in names.items()}


@pytest.fixture
def tiny_preset() -> Preset:
    """RealESRGAN preset shrunk to a few steps of a tiny model on small patches."""
    return get_preset("realesrgan").with_overrides(
        arch_overrides=TINY_ARCH, steps=6, batch_size=2, hr_patch=32, val_every=3, ckpt_every=2,
        log_every=2, blind=False)
