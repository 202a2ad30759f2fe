"""CPU smoke test: a tiny model trains on real CT slices, resumes exactly, exports, and the
engine's registry loads and runs the exported checkpoint."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import torch
import yaml

from config.loader import load_config
from sr_engine import registry
from sr_engine.archs import file_sha256
from sr_engine.intensity import mapping_for, modality_values
from srnode.cli import main as srnode
from training.export import add_model_from_card, export_run
from training.loop import RunConfig, train
from training.presets import Preset


def _cfg(ct: dict[str, Path], out: Path, **kw: object) -> RunConfig:
    return RunConfig(data=[ct["cptac"]], val_data=[ct["ge"]], out=out, val_slices=2, val_crop=64,
                     progress=False, cache_dir=out.parent / "cache", **kw)


def test_train_resume_export_load(ct_by_name: dict[str, Path], tiny_preset: Preset, tmp_path: Path) -> None:
    # Run A: interrupted after step 4, then resumed to step 6.
    a = tmp_path / "a"
    first = train(tiny_preset, _cfg(ct_by_name, a, stop_after=4))
    assert first.step == 4 and (a / "last.pt").exists() and not (a / "final_ema.pt").exists()
    assert torch.load(a / "last.pt", weights_only=False)["step"] == 4
    resumed = train(tiny_preset, _cfg(ct_by_name, a))
    assert resumed.step == 6

    # Run B: the same six steps uninterrupted, through the `srnode train` CLI.
    b = tmp_path / "b"
    rc = srnode(["train", "--preset", "realesrgan", "--data", str(ct_by_name["cptac"]),
                 "--val-data", str(ct_by_name["ge"]), "--out", str(b), "--cache-dir", str(tmp_path / "cache"),
                 "--steps", "6", "--batch", "2", "--hr-patch", "32", "--val-every", "3",
                 "--ckpt-every", "2", "--log-every", "2", "--degradations", "off",
                 "--set", 'arch_overrides={"num_filters": 8, "num_blocks": 1}',
                 "--val-slices", "2", "--val-crop", "64", "--no-progress"])
    assert rc == 0
    # Resume restored model, EMA, optimizer, scheduler, step and RNG: identical weights.
    sa, sb = (torch.load(p / "last.pt", weights_only=False) for p in (a, b))
    for part in ("model", "ema"):
        for k in sa[part]:
            assert torch.equal(sa[part][k], sb[part][k]), (part, k)
    assert sa["scheduler"] == sb["scheduler"] and sa["step"] == sb["step"] == 6

    # Logs: CSV with training loss and validation against the bicubic baseline.
    rows = (a / "log.csv").read_text().splitlines()
    keys = {r.split(",")[2] for r in rows[1:]}
    assert {"train/l1", "train/lr", "val/psnr", "val/ssim", "val/bicubic_psnr"} <= keys
    assert resumed.best is not None and resumed.baseline is not None
    assert 20 < resumed.baseline["psnr"] < 60

    # Export: fp16 weights + card + registry entry, then the node's registry loads it.
    dest = tmp_path / "export"
    card = export_run(a, dest, name="ct-tiny", fp16=True, test_data=[ct_by_name["lung"]],
                      test_max_slices=3, test_crop=128, attribution="test data: see SOURCES.md")
    weights = dest / "ct-tiny.pth"
    assert sorted(p.name for p in dest.iterdir()) == [
        "MODEL_CARD.md", "ct-tiny.pth", "model_card.json", "registry.yaml", "training_curves.png"]
    assert card["sha256"] == file_sha256(weights) and card["steps"] == 6
    assert card["metrics"]["test"]["slices"] == 3
    assert json.loads((dest / "model_card.json").read_text())["intensity"] == {
        "mode": "fixed", "low": -1024.0, "high": 3071.0}
    assert "sha256" in (dest / "MODEL_CARD.md").read_text()
    assert (dest / "training_curves.png").stat().st_size > 10_000
    cfg_path = tmp_path / "node.yaml"
    cfg_path.write_text(yaml.safe_dump({"node": {"ae_title": "SRTEST"}}))
    add_model_from_card(dest / "model_card.json", cfg_path)
    node_cfg = load_config(cfg_path)
    spec = registry.resolve("ct-tiny", node_cfg.models)
    loaded = registry.load(spec)
    assert loaded.checkpoint_sha256 == card["sha256"]
    assert all(p.dtype == torch.float32 for p in loaded.upscaler.module.parameters())
    ds = pydicom.dcmread(sorted(ct_by_name["lung"].iterdir())[10])
    hu = modality_values(ds)[200:264, 200:264]
    out = loaded.upscale(hu[None], mapping_for("CT"))
    assert out.shape == (1, 256, 256) and out.dtype == np.float32 and np.isfinite(out).all()
    # The EMA weights exported are those the run validated (fp16 rounding only).
    ema = torch.load(a / "final_ema.pt", weights_only=True)
    got = torch.load(weights, weights_only=True)
    for k in ema:
        torch.testing.assert_close(got[k].float(), ema[k], atol=2e-3, rtol=2e-3)

