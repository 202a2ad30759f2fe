"""A real `srnode serve` above its quota with nothing it may recycle (the only candidates protected)
rejects a real DCMTK storescu's association as transient, with one log line saying why."""
from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import func, select, update

from dicom_node.index.models import Instance, Series
from tests.conftest import free_port
from tests.dicom_node.conftest import storescu
from tests.faults.harness import Destination, Node
from tests.pipeline.conftest import node_config
from tests.pipeline.helpers import write_config
from tests.retention.conftest import Archive

pytestmark = [pytest.mark.integration]


def test_storescu_refused_when_over_quota_and_nothing_eligible(tmp_path: Path, ct_slices: list[Path]) -> None:
    cfg = node_config(tmp_path, free_port(), Destination(tmp_path / "received"),
                      retention={"quota_mb": 0.001, "keep_after_delivery_h": 0, "check_interval_s": 0.5})
    archive = Archive(cfg["node"]["database_url"], Path(cfg["node"]["storage_dir"]), ct_slices)
    archive.pipeline()
    with archive.factory.begin() as s:
        s.execute(update(Series).values(protected=True))  # nothing may go: the quota cannot be met
    node = Node(write_config(tmp_path / "srnode.yaml", cfg), cfg, tmp_path / "node.log")
    try:
        node.start()
        sent = storescu(node.port, ct_slices[:1], flags=("-v",))
        out = sent.stdout + sent.stderr
        assert "Association Rejected" in out and "Rejected Transient" in out, out
        refusals = [line for line in node.log_text().splitlines() if "rejected association" in line]
        assert len(refusals) == 1 and "retention.quota_mb" in refusals[0], node.log_tail()
    finally:
        node.stop()
    with archive.factory() as s:
        assert s.scalar(select(func.count()).select_from(Instance)) == 4  # the archive, nothing more
    archive.close()
