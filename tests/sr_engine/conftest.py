"""Fixtures for the SR engine tests: modest torch threads, tiny configurations, official layouts."""
from __future__ import annotations

import re
from pathlib import Path

import pydicom
import pytest
import torch

from sr_engine.intensity import modality_values

# Tiny configurations of each architecture (same code paths as the official ones, fast on CPU).
TINY: dict[str, dict] = {
    "realesrgan": dict(num_filters=8, num_blocks=2),
    "bsrgan": dict(num_filters=8, num_blocks=2),
    "dpsr": dict(nc=8, nb=2),
    "swinir": dict(embed_dim=12, depths=[2], num_heads=[2], window_size=4, img_size=16),
    "hat": dict(embed_dim=12, depths=[2], num_heads=[2], window_size=4, img_size=16, squeeze_factor=4),
    "compact": dict(num_feat=8, num_conv=2),
}


@pytest.fixture(autouse=True, scope="session")
def _modest_threads() -> None:
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def weights_dir(shared_dir: Path) -> Path:
    return shared_dir / "weights"


@pytest.fixture(scope="session")
def weights_sha256(weights_dir: Path) -> dict[str, str]:
    sums = {}
    for line in (weights_dir / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split()
        sums[name] = digest
    return sums


@pytest.fixture(scope="session")
def ct_slice_hu(ct_dirs: list[Path]) -> torch.Tensor:
    """One real CT slice in HU, [1, 1, 512, 512] float32."""
    path = sorted(ct_dirs[0].glob("*.dcm"))[10]
    return torch.from_numpy(modality_values(pydicom.dcmread(path)))[None, None]


def old_rrdb_to_basicsr(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """spandrel's old-arch RRDBNet keys -> BasicSR/Real-ESRGAN names (x4 layout)."""
    nb = 1 + max(int(k.split(".")[3]) for k in sd if ".RDB" in k)
    out = {}
    for k, v in sd.items():
        m = re.match(r"model\.1\.sub\.(\d+)\.RDB(\d)\.conv(\d)\.0\.(weight|bias)", k)
        if m:
            out[f"body.{m[1]}.rdb{m[2]}.conv{m[3]}.{m[4]}"] = v
            continue
        kind = k.rsplit(".", 1)[1]
        name = {
            "model.0": "conv_first", f"model.1.sub.{nb}": "conv_body", "model.3": "conv_up1",
            "model.6": "conv_up2", "model.8": "conv_hr", "model.10": "conv_last",
        }[k.rsplit(".", 1)[0]]
        out[f"{name}.{kind}"] = v
    return out


def basicsr_to_bsrgan(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """BasicSR RRDBNet names -> the older ESRGAN names BSRGAN.pth uses."""
    out = {}
    for k, v in sd.items():
        k2 = re.sub(r"^body\.(\d+)\.rdb(\d)\.", r"RRDB_trunk.\1.RDB\2.", k)
        k2 = {"conv_body": "trunk_conv", "conv_up1": "upconv1", "conv_up2": "upconv2", "conv_hr": "HRconv"}.get(
            k2.rsplit(".", 1)[0], k2.rsplit(".", 1)[0]
        ) + "." + k2.rsplit(".", 1)[1]
        out[k2] = v
    return out
