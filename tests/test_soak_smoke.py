"""bench/soak.py end to end in about a minute (`--minutes 1 --quick`): real storescu senders, the
node with retention and housekeeping, a storescp stopped twice; nothing acknowledged is lost."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO_ROOT


def test_soak_quick_run_loses_nothing(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "bench.soak", "--minutes", "1", "--quick", "--out", str(tmp_path)],
                          check=False, cwd=REPO_ROOT, capture_output=True, text=True, timeout=400)
    figures = json.loads((tmp_path / "soak.json").read_text()) if (tmp_path / "soak.json").exists() else {}
    context = f"rc {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    assert done.returncode == 0, context
    assert figures["acknowledged"] == figures["instances_sent"] > 0, context
    assert figures["lost"] == 0 and figures["derived_missing"] == 0, context
    assert figures["delivered"] == figures["acknowledged"], context
    # storescp has no C-FIND: only an instance on the wire at an outage may come twice (RELIABILITY.md).
    assert figures["duplicates"] <= figures["duplicates_allowed"], context
    assert figures["unexpected_at_destination"] == 0, context
    assert figures["recycle_records"] > 0 and figures["recycled_originals"] > 0, context  # the quota was enforced
    # Refusals are allowed (reported): with the quick run's small quota the node may refuse while
    # nothing is eligible yet; the senders send again as a PACS would, so everything is acknowledged.
    assert figures["latency_windows"] and figures["processes_end"]["node"], context
    assert (tmp_path / "disk.png").stat().st_size > 0
