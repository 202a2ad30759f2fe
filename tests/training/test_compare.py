"""`srnode compare`: the paper's table with bicubic as baseline, a bar plot and a crop grid."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sr_engine.archs import create_model, state_dict_for_export
from srnode.cli import main as srnode
from tests.training.conftest import TINY_ARCH


def test_compare_table_and_figures(ct_by_name: dict[str, Path], tmp_path: Path) -> None:
    torch.manual_seed(0)
    paths = []
    for name in ("zs", "ft"):
        p = tmp_path / f"{name}.pth"
        torch.save(state_dict_for_export(create_model("realesrgan", **TINY_ARCH)), p)
        paths.append(str(p))
    out = tmp_path / "cmp"
    rc = srnode(["compare", "--data", str(ct_by_name["lung"]), "--pair", "tiny", *paths,
                 "--out", str(out), "--max-slices", "3", "--crop", "96", "--device", "cpu"])
    assert rc == 0
    table = (out / "table.md").read_text().splitlines()
    assert table[0].startswith("| model (3 slices) | PSNR zero-shot | PSNR fine-tuned | PSNR change %")
    assert table[2].startswith("| bicubic (baseline) |")
    summary = json.loads((out / "results.json").read_text())["summary"]
    cells = [c.strip() for c in table[3].split("|")[1:-1]]
    zp, fp = summary["tiny zero-shot"]["psnr_hu"]["mean"], summary["tiny fine-tuned"]["psnr_hu"]["mean"]
    assert cells[0] == "tiny" and cells[1] == f"{zp:.2f}" and cells[2] == f"{fp:.2f}"
    assert cells[3] == f"{100 * (fp - zp) / zp:+.2f}"
    # Bicubic upscaling of an antialiased-bicubic LR is a real baseline: tens of dB, below perfect.
    assert 25 < summary["bicubic"]["psnr_hu"]["mean"] < 60
    for png in ("bars.png", "crops.png"):
        with Image.open(out / png) as im:
            assert im.size[0] > 300 and im.size[1] > 200
            assert len(np.unique(np.asarray(im.convert("L")))) > 20  # not a blank figure
