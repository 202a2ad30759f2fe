"""Seeded fuzz of a real CT over DIMSE against `srnode serve`, beside a valid parallel sender.

Issue 14 items 2, 4, 5: no patient name or ID in anything the node writes, every documented
refusal status, one log line per refusal, nothing acknowledged lost, nothing refused kept.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.faults.fuzz import run_fuzz

pytestmark = [pytest.mark.integration, pytest.mark.faults]
VARIANTS = 300


def test_fuzz_corpus_beside_a_parallel_sender(tmp_path: Path, ct_dirs: list[Path]) -> None:
    source = sorted(next(d for d in ct_dirs if d.name.startswith("lung-pet-ct-dx")).glob("*.dcm"))[0]
    parallel = sorted(next(d for d in ct_dirs if d.name.startswith("cptac-lscc")).glob("*.dcm"))
    figures: dict[str, Any] = run_fuzz(tmp_path, source, parallel, n=VARIANTS)
    print(json.dumps(figures, indent=2, sort_keys=True))  # also in tmp_path/fuzz_figures.json
    context = json.dumps(figures, indent=1)
    assert figures["tried"] == VARIANTS
    assert figures["node_alive_after"] and figures["echo_after"] and figures["crashes"] == 0, context
    assert figures["no_response"] == 0, context
    # The parallel sender's series lands whole.
    par = figures["parallel"]
    assert par["acknowledged"] == par["stored"] == par["sent"] == len(parallel), context
    # Acknowledged means on disk and indexed; refused means neither; nothing else in the index.
    assert figures["stored"] == figures["acknowledged"] > 0 and figures["lost"] == [], context
    assert figures["refused_but_indexed"] == [] and figures["refused_but_on_disk"] == [], context
    assert figures["unexplained_rows"] == 0, context
    # Every variant whose status docs/storage.md predicts got exactly that status.
    assert figures["unexpected_status"] == [], context
    assert set(figures["refused_by_status"]) <= {"0xA900", "0xC002", "0xC003"}, context
    # One line per refusal, no traceback, and not one byte of the patient's name or ID.
    assert figures["refusal_log_lines"] == figures["refused"], context
    assert figures["tracebacks"] == 0, context
    assert figures["output_bytes"] > 0 and figures["phi_hits"] == {}, context
