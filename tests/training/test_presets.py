"""Presets carry the paper's hyperparameters and are overridable."""
from __future__ import annotations

import pytest

from training.presets import PAPER_MILESTONES, PRESETS, get_preset

PAPER_MODELS = ("bsrgan", "realesrgan", "dpsr", "swinir", "hat")


def test_paper_hyperparameters() -> None:
    lrs = {n: PRESETS[n].lr for n in PAPER_MODELS}
    assert lrs == {"bsrgan": 1e-6, "realesrgan": 1e-4, "dpsr": 2e-4, "swinir": 1e-6, "hat": 1e-5}
    # Every preset, the paper's five and ours (compact), keeps the paper's schedule.
    for p in PRESETS.values():
        assert p.batch_size == 24 and p.steps == 1_000_000 and p.gamma == 0.5
        assert p.milestones == PAPER_MILESTONES == (500_000, 800_000, 900_000, 950_000, 1_000_000)


def test_compact_preset_is_the_grey_fast_model() -> None:
    p = get_preset("compact")
    assert p.arch == "compact" and p.native_noise and p.lr == 5e-4
    assert p.arch_overrides["num_in_ch"] == p.arch_overrides["num_out_ch"] == 1


def test_overrides_and_scaled_milestones() -> None:
    p = get_preset("RealESRGAN").with_overrides(steps=400, lr=2e-4, batch_size=None)
    assert p.steps == 400 and p.lr == 2e-4 and p.batch_size == 24
    assert p.scaled_milestones() == [200, 320, 360, 380, 400]
    assert get_preset("dpsr").scaled_milestones() == list(PAPER_MILESTONES)
    with pytest.raises(ValueError, match="unknown preset field"):
        p.with_overrides(learning_rate=1)
    with pytest.raises(KeyError, match="known: bsrgan"):
        get_preset("edsr")
