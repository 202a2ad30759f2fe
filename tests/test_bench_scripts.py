"""Every bench script at least starts: `--help` exits 0 (an import error or a stale path fails CI)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

# Scripts with a command line (move_bench's main only says to run bench_qr, which imports it).
SCRIPTS = sorted(p for p in (REPO_ROOT / "bench").rglob("*.py")
                 if 'if __name__ == "__main__"' in (text := p.read_text(encoding="utf-8")) and "argparse" in text)


def test_there_are_bench_scripts() -> None:
    assert len(SCRIPTS) >= 10, SCRIPTS  # the glob still finds them


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_bench_script_help(script: Path) -> None:
    module = ".".join(script.relative_to(REPO_ROOT).with_suffix("").parts)
    done = subprocess.run([sys.executable, "-m", module, "--help"], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage" in done.stdout.lower()
