"""bench/dicomweb/stow_qido.py --smoke: both servers store every instance and answer every search alike."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.integration


def test_stow_qido_bench_smoke(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "bench.dicomweb.stow_qido", "--smoke", "--out", str(tmp_path)],
                          check=False, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    figures = json.loads((tmp_path / "results.json").read_text())
    assert {r["server"] for r in figures["stow"]} == {"srnode", "Orthanc"}
    assert all(r["rate"] > 0 and len(r["seconds"]) == 1 for r in figures["stow"])
    by_query: dict[str, dict[str, int]] = {}
    for t in figures["qido"]["timings"]:
        by_query.setdefault(t["query"], {})[t["server"]] = t["results"]
    assert len(by_query) == 4
    for query, results in by_query.items():  # the same catalogue, the same matches
        assert results["srnode"] == results["Orthanc"] > 0, (query, results)
