"""Admin changes reach the running pipeline: a model added and routed at run time processes the
next series (embedded worker restarted onto the new model's queues), without a node restart."""
from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

from sqlalchemy import select

from config.loader import parse_config
from dicom_node.index.models import Job, JobState
from dicom_node.server import NodeServer
from dicom_node.wiring import build_node
from tests.conftest import free_port


def _send(port: int, files: list[Path]) -> None:
    storescu = shutil.which("storescu")
    assert storescu, "DCMTK storescu is not installed (make system-deps)"
    subprocess.run([storescu, "-aet", "SCANNER", "-aec", "SRNODE", "127.0.0.1", str(port), *map(str, files)],
                   check=True, timeout=60, capture_output=True)


def _wait_done(node: NodeServer, count: int, timeout_s: float) -> list[Job]:
    deadline = time.monotonic() + timeout_s
    jobs: list[Job] = []
    while time.monotonic() < deadline:
        with node.session_factory() as session:
            jobs = list(session.execute(select(Job).order_by(Job.id)).scalars())
        if len(jobs) >= count and all(j.state in (JobState.done, JobState.failed) for j in jobs):
            return jobs
        time.sleep(0.5)
    raise AssertionError(f"jobs not finished after {timeout_s} s: {[(j.id, j.model, j.state) for j in jobs]}")


def test_model_added_and_routed_at_run_time_processes_next_series(tmp_path: Path, ct_dirs: list[Path]) -> None:
    cfg = parse_config({
        "node": {"ae_title": "SRNODE", "host": "127.0.0.1", "port": free_port(),
                 "storage_dir": str(tmp_path / "storage"), "database_url": f"sqlite:///{tmp_path / 'index.db'}",
                 "min_free_disk_mb": 0, "shutdown_grace_s": 2},
        "peers": {"scanner": {"ae_title": "SCANNER", "host": "127.0.0.1", "port": 104}},
        "series": {"stable_after_s": 1, "check_interval_s": 0.3},
        "models": {"bicubic-x2": {"arch": "bicubic", "scale": 2}},
        "routing": [{"name": "ct", "match": {"modality": "CT"}, "model": "bicubic-x2"}],
        "worker": {"device": "cpu", "batch_size": 1},
    }, environ={})
    node = build_node(cfg)
    node.start()
    try:
        first, second = ct_dirs[0], ct_dirs[1]
        _send(node.port, sorted(first.glob("*.dcm"))[:2])
        assert [j.model for j in _wait_done(node, 1, 120)] == ["bicubic-x2"]

        # An admin registers a new model and routes CT to it (what the admin API does).
        models = {**node.live.current().model_dump(mode="json")["models"],
                  "lanczos-x2": {"arch": "lanczos", "scale": 2}}
        node.live.set_section("models", models, actor="test")
        routing = [{"name": "ct", "match": {"modality": "CT"}, "model": "lanczos-x2"}]
        node.live.set_section("routing", routing, actor="test")

        _send(node.port, sorted(second.glob("*.dcm"))[:2])
        jobs = _wait_done(node, 2, 150)
        assert [j.model for j in jobs] == ["bicubic-x2", "lanczos-x2"]
        assert all(j.state == JobState.done for j in jobs), [(j.model, j.state, j.error) for j in jobs]
        assert jobs[1].progress_done == jobs[1].progress_total == 2
    finally:
        node.stop(0)
