"""DDP under torchrun: two CPU processes (Gloo) train one model and rank 0 checkpoints it."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import free_port


@pytest.mark.slow
def test_torchrun_two_processes(ct_by_name: dict[str, Path], tmp_path: Path, repo_root: Path) -> None:
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_port", str(free_port()), "-m", "srnode", "train",
           "--preset", "realesrgan", "--data", str(ct_by_name["cptac"]), "--val-data", str(ct_by_name["ge"]),
           "--out", str(out), "--steps", "2", "--batch", "1", "--hr-patch", "32", "--val-every", "2",
           "--ckpt-every", "2", "--degradations", "off", "--threads", "1", "--no-progress",
           "--set", 'arch_overrides={"num_filters": 8, "num_blocks": 1}', "--val-slices", "1", "--val-crop", "64"]
    proc = subprocess.run(cmd, cwd=repo_root, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((out / "run.json").read_text())["world_size"] == 2
    state = torch.load(out / "last.pt", weights_only=False)
    assert state["step"] == 2 and not any(k.startswith("module.") for k in state["model"])
    assert (out / "final_ema.pt").exists()
