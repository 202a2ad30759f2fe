"""Fault tests: a worker SIGKILLed mid-series, a destination down for 30 s, a node restart."""
from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pydicom
import pytest

from config.loader import parse_config
from dicom_node.derive.uids import derived_sop_uid
from dicom_node.index.db import make_engine, session_factory
from dicom_node.index.models import Job, JobState, Outbox, OutboxState
from dicom_node.wiring import build_node
from sr_engine.registry import builtin_digest
from tests.conftest import free_port
from tests.orthanc import Orthanc
from tests.pipeline.conftest import node_config
from tests.pipeline.helpers import expected_derived_uid, forward, orthanc_instances, wait_for_series, write_config
from tests.pipeline.test_end_to_end import redis_url, start_worker  # noqa: F401 - fixture

pytestmark = pytest.mark.integration


def job_row(cfg: dict) -> Job | None:
    engine = make_engine(cfg["node"]["database_url"])
    try:
        with session_factory(engine)() as s:
            return s.query(Job).first()
    finally:
        engine.dispose()


def outbox_rows(cfg: dict) -> list[Outbox]:
    engine = make_engine(cfg["node"]["database_url"])
    try:
        with session_factory(engine)() as s:
            return list(s.query(Outbox).all())
    finally:
        engine.dispose()


def wait_until(predicate, timeout_s: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_worker_sigkilled_mid_series(tmp_path: Path, orthanc: Orthanc, node_port: int, ct_dirs: list[Path],
                                     redis_url: str) -> None:  # noqa: F811
    folder = next(d for d in ct_dirs if d.name.startswith("lung-pet-ct-dx"))
    slices = sorted(folder.glob("*.dcm"))[:8]
    # x4 makes each slice slow enough (a 2048² write) to kill the worker between slices.
    cfg = node_config(tmp_path, node_port, orthanc, broker_url=redis_url, worker={"embedded": False},
                      models={"bicubic": {"arch": "bicubic", "scale": 4}})
    config_file = write_config(tmp_path / "srnode.yaml", cfg)
    node = build_node(parse_config(cfg, environ={}))
    node.start()
    first = start_worker(config_file, tmp_path / "worker1.log")
    second = None
    try:
        forward(orthanc, slices)
        wait_until(lambda: (j := job_row(cfg)) is not None and 1 <= j.progress_done < len(slices), 120,
                   "the first worker to be mid-series")
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        killed_at = job_row(cfg)
        assert killed_at is not None and killed_at.state == JobState.running
        assert killed_at.progress_done < len(slices)
        second = start_worker(config_file, tmp_path / "worker2.log")
        uid = expected_derived_uid(slices[0], scale=4)
        instances = wait_for_series(orthanc, uid, len(slices), timeout_s=150)
        wait_until(lambda: (j := job_row(cfg)) is not None and j.state == JobState.done, 30, "job done")
        time.sleep(2)  # anything duplicated would have arrived by now
        instances = orthanc_instances(orthanc, uid)
    finally:
        for p in (first, second):
            if p is not None and p.poll() is None:
                p.terminate()
                p.wait(timeout=30)
        node.stop()
    sha = builtin_digest("bicubic")
    expected = {derived_sop_uid(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID, "bicubic", sha, 4)
                for f in slices}
    got = [orthanc.get(f"/instances/{i['ID']}")["MainDicomTags"]["SOPInstanceUID"] for i in instances]
    assert len(got) == len(slices) and set(got) == expected  # complete, and no duplicate
    job = job_row(cfg)
    assert job is not None and job.attempts >= 2 and job.progress_done == len(slices)
    rows = outbox_rows(cfg)
    assert len(rows) == len(slices) and all(r.state == OutboxState.delivered for r in rows)


def test_destination_down_30s_does_not_block_others(tmp_path: Path, orthanc: Orthanc, node_port: int,
                                                    ct_slices: list[Path]) -> None:
    other_port = free_port()
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    other = subprocess.Popen(["storescp", "--aetitle", "OTHER", "--output-directory", str(other_dir),
                              "--filename-extension", ".dcm", str(other_port)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cfg = node_config(tmp_path, node_port, orthanc)
    cfg["peers"]["OTHER"] = {"ae_title": "OTHER", "host": "127.0.0.1", "port": other_port}
    cfg["routing"][0]["destinations"] = ["PACS", "OTHER"]
    node = build_node(parse_config(cfg, environ={}))
    node.start()
    try:
        forward(orthanc, ct_slices)
        orthanc.stop()
        down_at = time.monotonic()
        # The other destination gets everything while PACS is down.
        wait_until(lambda: len(list(other_dir.glob("*.dcm"))) == len(ct_slices), 120, "OTHER to receive")
        pacs_rows = wait_until(
            lambda: [r for r in outbox_rows(cfg) if r.destination == "PACS" and r.attempts >= 2], 60,
            "failed attempts to PACS")
        assert all(r.state == OutboxState.pending and "cannot associate" in r.last_error for r in pacs_rows)
        time.sleep(max(0.0, 30 - (time.monotonic() - down_at)))
        orthanc.start()
        uid = expected_derived_uid(ct_slices[0])
        wait_for_series(orthanc, uid, len(ct_slices), timeout_s=60)
    finally:
        node.stop()
        other.terminate()
        other.wait(timeout=10)
    rows = outbox_rows(cfg)
    assert len(rows) == 2 * len(ct_slices) and all(r.state == OutboxState.delivered for r in rows)


def test_node_restart_with_jobs_queued(tmp_path: Path, orthanc: Orthanc, node_port: int,
                                       ct_slices: list[Path]) -> None:
    cfg = node_config(tmp_path, node_port, orthanc)
    node = build_node(parse_config(cfg, environ={}))
    node.start()
    try:
        forward(orthanc, ct_slices)
        job = wait_until(lambda: job_row(cfg), 60, "the job row")
    finally:
        node.stop()  # the embedded worker goes with it
    stopped = job_row(cfg)
    assert stopped is not None and stopped.state != JobState.done, \
        "job finished before the restart; test proves nothing"
    node = build_node(parse_config(cfg, environ={}))
    node.start()
    try:
        uid = expected_derived_uid(ct_slices[0])
        wait_for_series(orthanc, uid, len(ct_slices), timeout_s=120)
    finally:
        node.stop()
    done = job_row(cfg)
    assert done is not None and done.id == job.id and done.state == JobState.done
    assert all(r.state == OutboxState.delivered for r in outbox_rows(cfg))
