"""The CT checkpoint shipped in models/: matches its card, loads through the node's registry,
and beats bicubic on slices of the test series it never saw."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import torch

from sr_engine import registry
from sr_engine.archs import file_sha256
from sr_engine.evaluate import Slice, evaluate_slices, summarize
from sr_engine.intensity import CT_MAPPING, modality_values


def test_shipped_checkpoint_card_registry_and_quality(repo_root: Path, ct_by_name: dict[str, Path]) -> None:
    folder = repo_root / "models" / "ct-realesrgan-anime6b"
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
    for f in (files[8], files[20]):
        hu = modality_values(pydicom.dcmread(f))
        slices.append(Slice(f.name, np.ascontiguousarray(hu[192:320, 192:320])))
    bicubic = registry.load(registry.resolve("bicubic"))
    rows = evaluate_slices(slices, {"model": loaded.upscale, "bicubic": bicubic.upscale}, 4,
                           mapping=CT_MAPPING)
    s = summarize(rows)
    assert s["model"]["psnr_hu"]["mean"] > s["bicubic"]["psnr_hu"]["mean"] + 1.0
