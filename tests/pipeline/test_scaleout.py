"""Scale-out that survives its parts (issue 21): a node, a private Redis, two `srnode worker`
processes and a DCMTK storescp that keeps every reception, so each derived slice is counted.

(a) Redis restarted empty while jobs sit queued with a task id: every job finishes, every derived
    slice is delivered once, with no one touching the node (the dispatcher's reconciler).
(b) SIGTERM to the worker running a job: it exits after the current slice, its job is queued again
    at once (long before worker.heartbeat_timeout_s) and finishes on the other worker.
"""
from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from config.loader import parse_config
from dicom_node.index.db import make_engine, session_factory
from dicom_node.index.models import Job, JobState
from dicom_node.pipeline.dispatch import NODE_STARTED, BrokerWatch
from dicom_node.wiring import build_node
from tests.conftest import free_port
from tests.dicom_node.conftest import storescu
from tests.faults.harness import Destination, expected_derived, wait_until
from tests.pipeline.conftest import node_config
from tests.pipeline.helpers import write_config
from tests.pipeline.test_end_to_end import start_worker

pytestmark = pytest.mark.integration

HEARTBEAT_TIMEOUT_S = 60.0  # the default: a release must not wait for it


class PrivateRedis:
    """A redis-server of this test only, without persistence: a restart loses every message."""

    def __init__(self, work_dir: Path) -> None:
        self.port = free_port()
        self.work_dir = work_dir
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.work_dir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port)
        wait_until(lambda: self._ping(client), 20, "redis-server to answer")

    @staticmethod
    def _ping(client: redis.Redis) -> bool:
        try:
            return bool(client.ping())
        except redis.ConnectionError:
            return False

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path / "redis")
    server.start()
    yield server
    server.kill()


@pytest.fixture
def destination(tmp_path: Path) -> Iterator[Destination]:
    dest = Destination(tmp_path / "received")
    dest.start()
    yield dest
    dest.stop()


def scaleout_config(tmp_path: Path, dest: Destination, broker_url: str, scale: int) -> dict:
    """The pipeline tests' node config on a Redis broker, no embedded worker, bicubic x`scale`."""
    return node_config(tmp_path, free_port(), dest, broker_url=broker_url,  # type: ignore[arg-type]
                       worker={"embedded": False, "heartbeat_timeout_s": HEARTBEAT_TIMEOUT_S},
                       models={"bicubic": {"arch": "bicubic", "scale": scale}},
                       series={"stable_after_s": 1, "check_interval_s": 0.25},
                       send={"backoff_initial_s": 0.5, "backoff_max_s": 2})


def job_rows(cfg: dict) -> list[Job]:
    engine = make_engine(cfg["node"]["database_url"])
    try:
        with session_factory(engine)() as s:
            return list(s.query(Job).order_by(Job.id))
    finally:
        engine.dispose()


def stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait(timeout=30)


def assert_delivered_once(dest: Destination, sources: list[Path], scale: int, timeout_s: float) -> None:
    expected = expected_derived(sources, scale)
    wait_until(lambda: expected <= set(dest.received()), timeout_s, "every derived slice delivered", every_s=0.2)
    time.sleep(2)  # a duplicate would arrive within this
    received = dest.received()
    assert set(received) == expected and set(received.values()) == {1}, received


def test_broker_watch_tells_start_restart_and_reconnect(private_redis: PrivateRedis) -> None:
    watch = BrokerWatch(private_redis.url)
    assert watch.changed() == NODE_STARTED and watch.changed() == ""
    private_redis.kill()
    with pytest.raises(redis.ConnectionError):
        watch.changed()
    private_redis.start()  # the same port, an empty server
    assert watch.changed() == "the broker is reachable again" and watch.changed() == ""
    private_redis.kill()
    private_redis.start()
    assert watch.changed() == "the broker restarted"  # not seen down, but another server process


def test_broker_restart_without_persistence_loses_no_job(tmp_path: Path, ct_dirs: list[Path],
                                                         private_redis: PrivateRedis,
                                                         destination: Destination) -> None:
    series = [sorted(d.glob("*.dcm"))[:6] for d in ct_dirs[:2]]
    cfg = scaleout_config(tmp_path, destination, private_redis.url, scale=2)
    config_file = write_config(tmp_path / "srnode.yaml", cfg)
    node = build_node(parse_config(cfg, environ={}))
    node.start()
    workers: list[subprocess.Popen] = []
    try:
        for files in series:  # no worker runs yet: the jobs wait in Redis
            assert storescu(cfg["node"]["port"], files).returncode == 0
        wait_until(lambda: len(jobs := job_rows(cfg)) == len(series) and all(
            j.state == JobState.queued and j.task_id for j in jobs), 60, "every job queued with a task id")
        private_redis.kill()
        private_redis.start()  # empty: every message is gone, the job rows still say queued
        workers = [start_worker(config_file, tmp_path / f"worker{i}.log") for i in (1, 2)]
        assert_delivered_once(destination, [f for files in series for f in files], 2, timeout_s=90)
        wait_until(lambda: all(j.state == JobState.done for j in job_rows(cfg)), 30, "every job done")
    finally:
        stop(workers)
        node.stop()


def _worker_running(job: Job, logs: list[Path]) -> int:
    """Which worker (index into `logs`) received the job's current task (Celery logs the task id)."""
    owners = [i for i, log in enumerate(logs) if job.task_id in log.read_text(errors="replace")]
    assert len(owners) == 1, (job.task_id, owners)
    return owners[0]


def test_sigterm_releases_the_job_at_once_to_the_other_worker(tmp_path: Path, ct_dirs: list[Path],
                                                               private_redis: PrivateRedis,
                                                               destination: Destination) -> None:
    folder = next(d for d in ct_dirs if d.name.startswith("lung-pet-ct-dx"))
    files = sorted(folder.glob("*.dcm"))[:12]
    # x4: a 2048² slice per second or so, so the job outlasts the few seconds a stop may take.
    cfg = scaleout_config(tmp_path, destination, private_redis.url, scale=4)
    cfg["worker"]["batch_size"] = 1
    config_file = write_config(tmp_path / "srnode.yaml", cfg)
    node = build_node(parse_config(cfg, environ={}))
    node.start()
    logs = [tmp_path / f"worker{i}.log" for i in (1, 2)]
    workers = [start_worker(config_file, log) for log in logs]
    try:
        wait_until(lambda: all(" ready." in log.read_text(errors="replace") for log in logs if log.exists()) and all(
            log.exists() for log in logs), 90, "both workers ready", every_s=0.2)
        assert storescu(cfg["node"]["port"], files).returncode == 0
        running = wait_until(lambda: (jobs := job_rows(cfg)) and jobs[0].state == JobState.running
                             and 1 <= jobs[0].progress_done < len(files) - 4 and jobs[0], 90, "the job mid-series")
        victim = _worker_running(running, logs)
        workers[victim].send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        released = wait_until(lambda: (j := job_rows(cfg)[0]).task_id != running.task_id and j, 20,
                              "the job released")
        released_after = time.monotonic() - t0
        workers[victim].wait(timeout=20)
        exited_after = time.monotonic() - t0
        assert released.progress_done < len(files), "the stopping worker finished the whole job"
        assert released_after < HEARTBEAT_TIMEOUT_S / 4, released_after  # at once, not after the heartbeat timeout
        assert exited_after < 15, exited_after  # the embedded worker's stop() waits 15 s before SIGKILL
        assert workers[victim].returncode == 0  # a warm shutdown, not a kill
        assert_delivered_once(destination, files, 4, timeout_s=120)
        job = wait_until(lambda: (j := job_rows(cfg)[0]).state == JobState.done and j, 30, "the job done")
    finally:
        stop(workers)
        node.stop()
    assert job.attempts == 1  # the release was not counted as a failed attempt
    assert f"job #{job.id} released at" in logs[victim].read_text(errors="replace")
    assert f"job #{job.id} done" in logs[1 - victim].read_text(errors="replace")
