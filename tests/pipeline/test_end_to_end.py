"""Done-when: Orthanc → node → worker → derived series back in Orthanc (embedded and Redis)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from config.loader import parse_config
from dicom_node.index.db import make_engine, session_factory
from dicom_node.index.models import Job, JobState
from dicom_node.wiring import build_node
from tests.orthanc import Orthanc
from tests.pipeline.conftest import node_config
from tests.pipeline.helpers import (
    check_derived_in_orthanc,
    expected_derived_uid,
    forward,
    wait_for_series,
    write_config,
)

pytestmark = pytest.mark.integration
REDIS_DB = 13  # this package's own Redis database


def jobs(cfg: dict) -> list[Job]:
    engine = make_engine(cfg["node"]["database_url"])
    try:
        with session_factory(engine)() as s:
            return list(s.query(Job).all())
    finally:
        engine.dispose()


def test_embedded_default(tmp_path: Path, orthanc: Orthanc, node_port: int, ct_slices: list[Path]) -> None:
    cfg = node_config(tmp_path, node_port, orthanc)
    node = build_node(parse_config(cfg, environ={}))
    node.start()
    try:
        forward(orthanc, ct_slices)
        uid = expected_derived_uid(ct_slices[0])
        wait_for_series(orthanc, uid, len(ct_slices), timeout_s=120)
        check_derived_in_orthanc(orthanc, ct_slices, uid, tmp_path)
    finally:
        node.stop()
    (job,) = jobs(cfg)
    assert job.state == JobState.done and (job.progress_done, job.progress_total) == (4, 4)
    # The whole timeline on the job row: arrival, queue, worker stages, send tail.
    assert {"receive", "stability", "queue", "read", "infer", "write", "send"} <= set(json.loads(job.timings))


def start_worker(config_file: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "srnode", "worker", "--config", str(config_file),
                             "--threads", "1"], stdout=log.open("ab"), stderr=subprocess.STDOUT)


@pytest.fixture
def redis_url() -> str:
    client = redis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB)
    client.flushdb()
    yield f"redis://127.0.0.1:6379/{REDIS_DB}"
    client.flushdb()


def test_redis_broker_separate_worker(tmp_path: Path, orthanc: Orthanc, node_port: int, ct_slices: list[Path],
                                      redis_url: str) -> None:
    cfg = node_config(tmp_path, node_port, orthanc, broker_url=redis_url, worker={"embedded": False})
    config_file = write_config(tmp_path / "srnode.yaml", cfg)
    node = build_node(parse_config(cfg, environ={}))
    node.start()
    worker = start_worker(config_file, tmp_path / "worker.log")
    try:
        forward(orthanc, ct_slices)
        uid = expected_derived_uid(ct_slices[0])
        wait_for_series(orthanc, uid, len(ct_slices), timeout_s=120)
        check_derived_in_orthanc(orthanc, ct_slices, uid, tmp_path)
    finally:
        worker.terminate()
        worker.wait(timeout=30)
        node.stop()
    (job,) = jobs(cfg)
    assert job.state == JobState.done
    assert "srnode-cpu" in (tmp_path / "worker.log").read_text()
