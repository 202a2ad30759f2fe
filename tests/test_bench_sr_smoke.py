"""The bench/sr scripts run end to end in their --smoke mode (tiny inputs, seconds each): a bench
that no longer matches the code it measures fails here, not on the day someone needs its numbers.
Nothing is timed; the figures belong to BENCHMARKS.md."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

SCRIPTS = sorted(p for p in (REPO_ROOT / "bench" / "sr").glob("*.py")
                 if 'if __name__ == "__main__"' in p.read_text(encoding="utf-8"))


def test_every_sr_bench_has_a_smoke_mode() -> None:
    assert {p.stem for p in SCRIPTS} >= {"encode", "latency", "memory", "plots", "throughput"}
    for script in SCRIPTS:
        assert "--smoke" in script.read_text(encoding="utf-8"), script.name


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
def test_sr_bench_smoke_run(script: Path, tmp_path: Path) -> None:
    module = ".".join(script.relative_to(REPO_ROOT).with_suffix("").parts)
    done = subprocess.run([sys.executable, "-m", module, "--smoke"], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
