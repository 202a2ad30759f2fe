"""The CT checkpoint shipped in models/: matches its card, loads through the node's registry,
and beats bicubic on slices of the test series it never saw."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch

from sr_engine import registry
from sr_engine.archs import file_sha256
from sr_engine.evaluate import Slice, evaluate_slices, summarize
from sr_engine.intensity import CT_MAPPING, modality_values

SHIPPED = ("ct-compact", "ct-realesrgan-anime6b")


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_checkpoint_card_registry_and_quality(name: str, repo_root: Path, ct_by_name: dict[str, Path]) -> None:
    folder = repo_root / "models" / name
    card = json.loads((folder / "model_card.json").read_text())
    weights = folder / card["weights"]
    assert weights.stat().st_size < 20 * 2**20
    assert file_sha256(weights) == card["sha256"]
    assert card["intensity"] == {"mode": "fixed", "low": -1024.0, "high": 3071.0}
    assert "CC BY 4.0" in (folder / "MODEL_CARD.md").read_text()
    spec = registry.ModelSpec(card["name"], card["arch"], weights, card["sha256"], card["scale"])
    loaded = registry.load(spec, tile=None)
    assert all(p.dtype == torch.float32 for p in loaded.upscaler.module.parameters())
    files = sorted(ct_by_name["lung"].iterdir())
    slices = []
    for f in (files[8], files[20]):  # whole slices: 128→512, the protocol
        slices.append(Slice(f.name, np.ascontiguousarray(modality_values(pydicom.dcmread(f)))))
    bicubic = registry.load(registry.resolve("bicubic"))
    rows = evaluate_slices(slices, {"model": loaded.upscale, "bicubic": bicubic.upscale}, 4,
                           mapping=CT_MAPPING)
    s = summarize(rows)
    assert s["model"]["psnr_hu"]["mean"] > s["bicubic"]["psnr_hu"]["mean"] + 1.0
    # Issue 20's floor, on the whole test series as exported (the card's figures).
    test = card["metrics"]["test"]
    assert test["model"]["psnr"] >= test["bicubic"]["psnr"] + 1.5, test


# Shipped CT models at native resolution, on slices of the test series: issue 20's targets (at most
# 10% more flat-tissue noise than lanczos, strong edges at least 5% steeper; RESULTS.md).
NATIVE_FIDELITY = ("ct-compact", "ct-realesrgan-anime6b")


@pytest.mark.parametrize("name", NATIVE_FIDELITY)
def test_shipped_model_sharpens_edges_without_adding_noise_at_native_resolution(
        name: str, repo_root: Path, ct_by_name: dict[str, Path]) -> None:
    from sr_engine.intensity import CT_RANGE
    from sr_engine.interpolate import lanczos_upscale
    from sr_engine.native_metrics import native_ratios

    folder = repo_root / "models" / name
    card = json.loads((folder / "model_card.json").read_text())
    spec = registry.ModelSpec(card["name"], card["arch"], folder / card["weights"], card["sha256"], card["scale"])
    loaded = registry.load(spec, tile=None)
    files = sorted(ct_by_name["lung"].iterdir())
    noise, edge = [], []
    for f in (files[6], files[14], files[22]):
        native = np.ascontiguousarray(modality_values(pydicom.dcmread(f))[192:320, 192:320]).astype(np.float32)
        sr = loaded.upscale(native[None], CT_MAPPING)[0]
        r = native_ratios(native, sr, lanczos_upscale(native, 4, clip=CT_RANGE), 4)
        noise.append(r.noise_ratio)
        edge.append(r.edge_ratio)
    # Native slices, nothing downscaled: no more flat-tissue noise than lanczos (+10%), steeper edges.
    assert float(np.median(noise)) <= 1.10, noise
    assert float(np.median(edge)) >= 1.05, edge
