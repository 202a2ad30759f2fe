"""`srnode demo` runs end to end (its own node, worker and destination) and beats bicubic."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_demo(tmp_path: Path, repo_root: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "srnode", "demo", "--out", str(tmp_path / "demo")],
                          capture_output=True, text=True, timeout=240, cwd=repo_root)
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:] + proc.stderr[-3000:]
    assert "job: done, 5 of 5 slices" in out
    scores = {m[1]: float(m[2]) for m in re.finditer(r"^(node output|bicubic)\s+([\d.]+)\s+[\d.]+$", out, re.M)}
    assert scores["node output"] > scores["bicubic"]
    assert (tmp_path / "demo" / "before_after.png").stat().st_size > 10_000
