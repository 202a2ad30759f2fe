"""A worker that fails its checks refuses jobs; a retry prefers another worker (issue 21 items 2, 3).

The integration test runs a node, a private Redis, a good `srnode worker` and one whose
storage_dir is an empty folder (the shared storage not mounted), and a DCMTK storescp that counts
every reception: every job is done once by the good worker, none fails, and GET /api/workers
lists the bad one `refusing` with the reason. The others drive the same code in-process on a real
SQLite index.
"""
from __future__ import annotations

import json
import logging
import subprocess
import urllib.request
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from config.loader import parse_config
from config.schema import ModelEntry
from dicom_node.index.db import make_engine, session_factory, session_scope
from dicom_node.index.migrate import upgrade
from dicom_node.index.models import Job, JobState, Worker, unserved_jobs, utcnow
from dicom_node.pipeline.service import PipelineService
from dicom_node.storage_identity import STORAGE_MARKER, write_storage_marker
from dicom_node.wiring import build_node
from tests.conftest import free_port
from tests.dicom_node.conftest import storescu
from tests.faults.harness import Destination, wait_until
from tests.pipeline.helpers import write_config
from tests.pipeline.test_end_to_end import start_worker
from tests.pipeline.test_scaleout import (  # noqa: F401
    PrivateRedis,
    assert_delivered_once,
    destination,
    job_rows,
    private_redis,
    scaleout_config,
    stop,
)
from tests.workers.test_workers import make_job
from workers.health import WorkerHealth, WorkerIdentity
from workers.process import claim_job, retry_or_fail

TOKEN = "worker-health-read-token"


def _api(port: int, path: str) -> Any:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def _workers_by_state(port: int) -> dict[str, list[dict[str, Any]]]:
    by_state: dict[str, list[dict[str, Any]]] = {}
    for w in _api(port, "/api/workers"):
        by_state.setdefault(w["state"], []).append(w)
    return by_state


@pytest.mark.integration
def test_a_worker_without_the_shared_storage_refuses_and_fails_no_job(tmp_path: Path, ct_dirs: list[Path],
                                                                     private_redis: PrivateRedis,
                                                                     destination: Destination) -> None:
    series = [sorted(d.glob("*.dcm"))[:3] for d in ct_dirs]
    cfg = scaleout_config(tmp_path, destination, private_redis.url, scale=2)
    admin_port = free_port()
    cfg["admin"] = {"enabled": True, "host": "127.0.0.1", "port": admin_port, "tokens": {TOKEN: "read"}}
    good_file = write_config(tmp_path / "good.yaml", cfg)
    empty = tmp_path / "not-mounted"  # what a worker sees where the shared storage is not mounted
    empty.mkdir()
    bad_file = write_config(tmp_path / "bad.yaml", {**cfg, "node": {**cfg["node"], "storage_dir": str(empty)}})
    # A third worker passes its checks at start, then its storage stops being the node's: it
    # consumes already and must hand every task it receives back, unclaimed.
    late = tmp_path / "unmounted-later"
    late.mkdir()
    late_file = write_config(tmp_path / "late.yaml", {**cfg, "node": {**cfg["node"], "storage_dir": str(late)}})
    node = build_node(parse_config(cfg, environ={}))
    node.start()
    (late / STORAGE_MARKER).write_text((Path(cfg["node"]["storage_dir"]) / STORAGE_MARKER).read_text())
    logs = {name: tmp_path / f"{name}.log" for name in ("bad", "late", "good")}
    workers: list[subprocess.Popen] = []
    try:
        # The bad one first: it used to be ready first and win the jobs (it failed each one fast).
        workers.append(start_worker(bad_file, logs["bad"]))
        workers.append(start_worker(late_file, logs["late"]))
        wait_until(lambda: " ready." in logs["late"].read_text(errors="replace"), 90, "the late worker consuming")
        (late / STORAGE_MARKER).write_text("another-storage\n")
        workers.append(start_worker(good_file, logs["good"]))
        seen = wait_until(lambda: (s := _workers_by_state(admin_port)) and len(s.get("refusing", [])) == 2
                          and len(s.get("ok", [])) == 1 and s, 90, "one worker ok, two refusing", every_s=0.5)
        refusing = next(w for w in seen["refusing"] if str(empty) in w["problem"])
        assert f"{empty / STORAGE_MARKER} is missing" in refusing["problem"], seen
        assert any(str(late) in w["problem"] and "another storage than the node's" in w["problem"]
                   for w in seen["refusing"]), seen
        assert refusing["models"] == ["bicubic"] and refusing["seen_s_ago"] < 30
        wait_until(lambda: " ready." in logs["good"].read_text(errors="replace"), 60, "the good worker consuming")
        for files in series:
            assert storescu(cfg["node"]["port"], files).returncode == 0
        assert_delivered_once(destination, [f for files in series for f in files], 2, timeout_s=90)
        jobs = wait_until(lambda: (js := job_rows(cfg)) and all(j.state == JobState.done for j in js) and js, 30,
                          "every job done")
        ready = urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/readyz", timeout=10)
        assert json.loads(ready.read())["checks"]["workers"] == "ok"
        assert refusing["name"] in [w["name"] for w in _workers_by_state(admin_port)["refusing"]]  # still refusing
    finally:
        stop(workers)
        node.stop()
    assert len(jobs) == len(series)
    assert all(j.attempts == 1 and not j.error and not j.last_failed_worker for j in jobs), \
        [(j.id, j.attempts, j.error) for j in jobs]
    bad_log, late_log, good_log = (logs[k].read_text(errors="replace") for k in ("bad", "late", "good"))
    assert all(f"job #{j.id} done" in good_log for j in jobs)
    assert "job #" not in bad_log and "refuses jobs" in bad_log and STORAGE_MARKER in bad_log
    # Whatever the late one received it handed back ("job #N handed back to the queue: ...").
    assert all(line.split("job #")[1].split(" ", 2)[1:2] == ["handed"] for line in late_log.splitlines()
               if "job #" in line), late_log


# --- In-process, on a real SQLite index -----------------------------------------------------------

@pytest.fixture
def index(tmp_path: Path):  # type: ignore[no-untyped-def]
    cfg = parse_config({"node": {"storage_dir": str(tmp_path / "storage"),
                                 "database_url": f"sqlite:///{tmp_path / 'index.db'}"},
                        "routing": [{"match": {"modality": "CT"}, "model": "bicubic"}]}, environ={})
    engine = make_engine(cfg.node.database_url)
    upgrade(cfg.node.database_url, engine)
    factory = session_factory(engine)
    write_storage_marker(Path(cfg.node.storage_dir), factory)
    yield cfg, factory
    engine.dispose()


def _health(cfg, factory, name: str, storage: Path | None = None) -> WorkerHealth:  # type: ignore[no-untyped-def]
    if storage is not None:
        cfg = cfg.model_copy(update={"node": cfg.node.model_copy(update={"storage_dir": storage})})
    health = WorkerHealth(cfg, factory, WorkerIdentity(name, "h", 1, "cpu", ["bicubic"]))
    health.beat()
    return health


def test_storage_checks_find_a_missing_foreign_or_matching_marker(index, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cfg, factory = index
    assert _health(cfg, factory, "good@h").problem == ""
    other = tmp_path / "other"
    other.mkdir()
    assert "is missing" in _health(cfg, factory, "unmounted@h", other).problem
    (other / STORAGE_MARKER).write_text("another-node\n")
    assert "another storage than the node's" in _health(cfg, factory, "foreign@h", other).problem
    # The node restarting on the same index and storage keeps the id the workers compare with.
    assert write_storage_marker(Path(cfg.node.storage_dir), factory) == \
        (Path(cfg.node.storage_dir) / STORAGE_MARKER).read_text().strip()


def test_a_model_file_whose_sha256_is_wrong_makes_the_worker_refuse(index, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cfg, factory = index
    weights = tmp_path / "m.pth"
    weights.write_bytes(b"not the checkpoint")
    cfg = cfg.model_copy(update={"models": {"rrdb": ModelEntry(arch="realesrgan", weights=weights, sha256="0" * 64)}})
    health = WorkerHealth(cfg, factory, WorkerIdentity("w@h", "h", 1, "cpu", ["rrdb"]))
    assert "model rrdb" in health.check() and "the config says 000000000000" in health.problem


def test_a_retry_prefers_another_healthy_worker(index) -> None:  # type: ignore[no-untyped-def]
    cfg, factory = index
    a, b = _health(cfg, factory, "a@h"), _health(cfg, factory, "b@h")
    job = make_job(factory)
    assert claim_job(factory, job, "task-1", 60)
    assert retry_or_fail(factory, job, "OSError: [Errno 2] gone", 5, worker="a@h") == 1
    with factory() as s:
        assert s.get(Job, job).last_failed_worker == "a@h"
    assert "b@h can take it" in a.hand_back_reason(job)  # a hands it back while b is there
    assert b.hand_back_reason(job) == ""  # b claims it
    with session_scope(factory) as s:  # b gone (not seen for a while): a takes its own retry
        s.execute(update(Worker).where(Worker.name == "b@h").values(last_seen_at=utcnow() - timedelta(minutes=5)))
    assert a.hand_back_reason(job) == ""
    b.beat()
    assert a.hand_back_reason(job)
    with session_scope(factory) as s:  # long after the retry was due: whoever is free takes it
        s.execute(update(Job).where(Job.id == job).values(task_due_at=utcnow() - timedelta(minutes=5)))
    assert a.hand_back_reason(job) == ""
    refusing = _health(cfg, factory, "c@h", Path("/nonexistent-storage"))
    assert refusing.hand_back_reason(job).startswith("this worker refuses jobs: storage:")


def test_queued_jobs_without_a_healthy_worker_are_logged(index, caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    cfg, factory = index
    job = make_job(factory)
    with session_scope(factory) as s:
        s.execute(update(Job).where(Job.id == job).values(created_at=utcnow() - timedelta(minutes=2)))
    service = PipelineService(cfg.model_copy(update={"broker_url": "redis://127.0.0.1:1/0",
                                                     "worker": cfg.worker.model_copy(update={"embedded": False})}),
                              factory, Path(cfg.node.storage_dir))
    assert service.worker is None
    with caplog.at_level(logging.INFO, logger="dicom_node.pipeline.service"):
        assert "1 of bicubic" in service.check_workers() and "no worker seen" in caplog.text
        _health(cfg, factory, "bad@h", Path("/nonexistent-storage"))
        assert "refusing: bad@h: storage:" in service.check_workers()
        assert caplog.text.count("no healthy worker consumes") == 1  # once, not at every check
        _health(cfg, factory, "good@h")
        assert service.check_workers() == ""
        assert "queued jobs have a healthy worker again" in caplog.text
    with factory() as s:
        assert unserved_jobs(s, utcnow()) == ""


def test_a_broker_with_the_default_embedded_runs_the_nodes_own_worker(index) -> None:  # type: ignore[no-untyped-def]
    cfg, factory = index
    service = PipelineService(cfg.model_copy(update={"broker_url": "redis://127.0.0.1:1/0"}), factory,
                              Path(cfg.node.storage_dir))
    # It consumes the broker; other workers' running jobs are left to the heartbeat check.
    assert service.worker is not None and not service.owns_all_jobs
