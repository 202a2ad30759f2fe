"""Worker building blocks on real SQLite/SQLAlchemy and the real kombu transport (no mocks)."""
from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
from kombu import Connection, Consumer
from sqlalchemy import select

from config.loader import parse_config
from config.schema import SendConfig
from dicom_node.broker import queue_name
from dicom_node.index.db import make_engine, session_factory, session_scope
from dicom_node.index.migrate import upgrade
from dicom_node.index.models import Job, JobState, Patient, Series, Study
from dicom_node.outbox.queue import backoff_s
from dicom_node.pipeline import Dispatcher
from tests.library_internals import consume
from tests.pipeline.test_jobs import stored  # noqa: F401 - fixture
from workers import model_cache
from workers.app import make_celery
from workers.process import claim_job, utcnow

torch.set_num_threads(1)


@pytest.fixture
def cfg(tmp_path: Path):  # type: ignore[no-untyped-def]
    return parse_config({
        "node": {"storage_dir": str(tmp_path / "storage"), "database_url": f"sqlite:///{tmp_path / 'i.db'}"},
        "models": {"bicubic": {"arch": "bicubic", "scale": 2}},
        "routing": [{"match": {"modality": "CT"}, "model": "bicubic"}],
        "worker": {"heartbeat_timeout_s": 1},
    }, environ={})


@pytest.fixture
def factory(cfg):  # type: ignore[no-untyped-def]
    engine = make_engine(cfg.node.database_url)
    upgrade(cfg.node.database_url, engine)
    yield session_factory(engine)
    engine.dispose()


def make_job(factory, n: int = 1) -> int:  # type: ignore[no-untyped-def]
    with session_scope(factory) as s:
        series = Series(series_uid=f"1.2.3.{n}", study=Study(study_uid=f"1.2.{n}", patient=Patient(patient_id=f"p{n}")))
        s.add(series)
        s.flush()
        job = Job(series_pk=series.id, model="bicubic", scale=2)
        s.add(job)
        s.flush()
        return job.id


def test_model_loaded_once_per_process(cfg) -> None:  # type: ignore[no-untyped-def]
    model_cache.clear()
    a = model_cache.get_model(cfg, "bicubic", "cpu")
    b = model_cache.get_model(cfg, "bicubic", "cpu")
    assert a is b and a.scale == 2


def test_preload_fills_the_cache_and_only_logs_a_model_that_cannot_load(cfg, caplog) -> None:  # type: ignore[no-untyped-def]
    model_cache.clear()
    model_cache.preload(cfg, ["no-such-model", "bicubic"], "cpu").join(30)
    assert "could not preload model no-such-model" in caplog.text
    assert ("bicubic", "cpu") in model_cache._CACHE  # loaded by the thread, before any job asked
    model_cache.clear()


@pytest.mark.parametrize("precision, runtime", [("auto", "onnxruntime"), ("bf16", "torch")])
def test_worker_precision_reaches_the_loaded_model(tmp_path: Path, shared_dir: Path, precision: str,
                                                  runtime: str) -> None:
    cfg = parse_config({
        "node": {"storage_dir": str(tmp_path / "storage"), "database_url": f"sqlite:///{tmp_path / 'i.db'}"},
        "models": {"esrgan": {"arch": "realesrgan",
                              "weights": str(shared_dir / "weights" / "RealESRGAN_x4plus_anime_6B.pth")}},
        "worker": {"precision": precision},
    }, environ={})
    model_cache.clear()
    up = model_cache.get_model(cfg, "esrgan", "cpu").upscaler
    assert (up.precision, up.runtime) == ("fp32" if precision == "auto" else precision, runtime)
    model_cache.clear()


def test_claim_is_exclusive_until_heartbeat_goes_stale(factory) -> None:  # type: ignore[no-untyped-def]
    job_id = make_job(factory)
    assert claim_job(factory, job_id, "task-a", heartbeat_timeout_s=1)
    assert not claim_job(factory, job_id, "task-b", heartbeat_timeout_s=1)  # running, fresh heartbeat
    time.sleep(1.2)
    assert claim_job(factory, job_id, "task-b", heartbeat_timeout_s=1)  # the first worker stopped beating
    with factory() as s:
        job = s.get(Job, job_id)
        assert job.attempts == 2 and job.task_id == "task-b"
    with session_scope(factory) as s:
        s.get(Job, job_id).state = JobState.done
    assert not claim_job(factory, job_id, "task-c", heartbeat_timeout_s=0.001)  # done stays done


def test_dispatcher_requeues_stale_running_job(cfg, factory) -> None:  # type: ignore[no-untyped-def]
    job_id = make_job(factory)
    with session_scope(factory) as s:
        job = s.get(Job, job_id)
        job.state, job.task_id, job.heartbeat_at = JobState.running, "dead", utcnow() - timedelta(seconds=5)
    dispatcher = Dispatcher(cfg, factory)
    assert dispatcher.requeue_stale() == 1
    assert dispatcher.dispatch_pending() == 1
    with factory() as s:
        job = s.get(Job, job_id)
        assert job.state == JobState.queued and job.task_id not in ("", "dead")
    assert dispatcher.dispatch_pending() == 0  # sent once


def _stale_running(factory, n: int, attempts: int, error: str = "") -> int:  # type: ignore[no-untyped-def]
    job_id = make_job(factory, n)
    with session_scope(factory) as s:
        job = s.get(Job, job_id)
        job.state, job.task_id, job.heartbeat_at = JobState.running, "dead", utcnow() - timedelta(seconds=5)
        job.attempts, job.error, job.progress_done, job.progress_total = attempts, error, 2, 7
    return job_id


def test_dispatcher_fails_a_stale_job_out_of_attempts_instead_of_requeueing(cfg, factory) -> None:  # type: ignore[no-untyped-def]
    """Issue 14 item 3: a job whose worker dies on every attempt used to be requeued forever."""
    limit = cfg.worker.max_retries  # 1 + max_retries attempts in all
    last_try = _stale_running(factory, 1, attempts=limit)  # one retry left
    poisoned = _stale_running(factory, 2, attempts=limit + 1, error="retrying: OSError: disk hiccup")
    silent = _stale_running(factory, 3, attempts=limit + 1)  # died without a word
    dispatcher = Dispatcher(cfg, factory)
    assert dispatcher.requeue_stale() == 1
    assert dispatcher.dispatch_pending() == 1  # only the job with attempts left is sent again
    with factory() as s:
        assert s.get(Job, last_try).state == JobState.queued
        for job_id in (poisoned, silent):
            job = s.get(Job, job_id)
            assert job.state == JobState.failed and job.finished_at is not None and job.task_id == ""
            assert job.error.startswith(f"gave up after {limit + 1} attempt(s): no heartbeat from its worker")
            assert "at 2 of 7 slices" in job.error
        assert s.get(Job, poisoned).error.endswith("last error: retrying: OSError: disk hiccup")
    assert dispatcher.requeue_stale() == 0  # failed stays failed


def test_node_restart_fails_running_jobs_out_of_attempts(cfg, factory) -> None:  # type: ignore[no-untyped-def]
    limit = cfg.worker.max_retries
    kept = _stale_running(factory, 1, attempts=limit)
    poisoned = _stale_running(factory, 2, attempts=limit + 1)
    assert Dispatcher(cfg, factory).reset_all_active() == 1
    with factory() as s:
        assert s.get(Job, kept).state == JobState.queued
        job = s.get(Job, poisoned)
        assert job.state == JobState.failed and "its worker stopped with the node" in job.error


def _order_taken(app, conn, queues) -> list[int]:  # type: ignore[no-untyped-def]
    """Send routine jobs 1, 2, then stat jobs 98, 99; return the order a prefetch-1 consumer takes them."""
    for job_id in (1, 2):
        app.send_task("srnode.process_job", args=[job_id], queue=queue_name("bicubic", "routine"))
    for job_id in (98, 99):
        app.send_task("srnode.process_job", args=[job_id], queue=queue_name("bicubic", "stat"))
    return consume(conn, conn, queues, 4,
                   lambda body, message: message.payload[0][0] if isinstance(message.payload, list) else body[0][0])


def test_embedded_transport_takes_stat_before_routine(cfg) -> None:  # type: ignore[no-untyped-def]
    app = make_celery(cfg)
    queues = [q for q in app.conf.task_queues]  # routine and stat, in any order
    with Connection(app.conf.broker_url, transport=app.conf.broker_transport) as conn:
        got = _order_taken(app, conn, list(reversed(queues)))
    assert got == [98, 99, 1, 2]  # strict: round robin would give 98, 1, 99, 2


def test_backoff_is_exponential_and_capped() -> None:
    send = SendConfig(backoff_initial_s=2, backoff_max_s=30)
    assert [backoff_s(n, send) for n in (1, 2, 3, 4, 5, 6)] == [2, 4, 8, 16, 30, 30]


def test_redis_broker_takes_stat_before_routine(tmp_path: Path) -> None:
    import redis

    db = 14  # this package's own Redis database
    client = redis.Redis(host="127.0.0.1", port=6379, db=db)
    client.flushdb()
    cfg = parse_config({
        "node": {"storage_dir": str(tmp_path / "storage"), "database_url": f"sqlite:///{tmp_path / 'i.db'}"},
        "routing": [{"match": {"modality": "CT"}, "model": "bicubic"}],
        "broker_url": f"redis://127.0.0.1:6379/{db}",
    }, environ={})
    try:
        app = make_celery(cfg)
        with app.connection_for_read() as conn:
            # The order `srnode worker -Q` uses: stat first.
            got = _order_taken(app, conn, list(app.conf.task_queues))
        # Strict order, not round robin (which would give 98, 1, 99, 2).
        assert got == [98, 99, 1, 2]
    finally:
        client.flushdb()


# --- Issue 21: the reconciler (lost broker messages), duplicates, graceful release -------------

def _queued_and_sent(cfg, factory, n: int = 1):  # type: ignore[no-untyped-def]
    job_id = make_job(factory, n)
    dispatcher = Dispatcher(cfg, factory, lease_s=60)
    assert dispatcher.dispatch_pending() == 1
    with factory() as s:
        return dispatcher, job_id, s.get(Job, job_id).task_id


def test_a_queued_job_whose_message_is_due_a_lease_ago_is_sent_again(cfg, factory) -> None:  # type: ignore[no-untyped-def]
    dispatcher, job_id, first = _queued_and_sent(cfg, factory)
    assert dispatcher.resend_queued("lease", lease_s=60) == 0  # just sent: its message is in the broker
    with session_scope(factory) as s:
        s.get(Job, job_id).task_due_at = utcnow() - timedelta(seconds=61)  # nobody took it for a lease
    assert dispatcher.resend_queued("lease", lease_s=60) == 1
    assert dispatcher.dispatch_pending() == 1
    with factory() as s:
        job = s.get(Job, job_id)
        assert job.state == JobState.queued and job.task_id not in ("", first)


def test_the_lease_does_not_resend_a_retry_before_its_countdown_is_due(cfg, factory) -> None:  # type: ignore[no-untyped-def]
    from workers.process import retry_or_fail

    job_id = make_job(factory)
    assert claim_job(factory, job_id, "worker-task", heartbeat_timeout_s=1)
    assert retry_or_fail(factory, job_id, "OSError: hiccup", max_retries=5) == 1  # retry due in 2 s
    dispatcher = Dispatcher(cfg, factory, lease_s=0.5)
    assert dispatcher.resend_queued("lease", lease_s=0.5) == 0  # the worker's countdown is still running
    time.sleep(2.7)  # due (2 s) + the lease: the worker that held the countdown is presumed dead
    assert dispatcher.resend_queued("lease", lease_s=0.5) == 1


def test_a_resend_whose_old_message_survived_runs_the_job_once(cfg, factory) -> None:  # type: ignore[no-untyped-def]
    """Duplicates are measured, not assumed: two real messages for one job; the claim drops the second."""
    dispatcher, job_id, first = _queued_and_sent(cfg, factory)
    assert dispatcher.resend_queued("the broker is reachable again") == 1  # the old message still exists
    assert dispatcher.dispatch_pending() == 1
    app = make_celery(cfg)
    delivered: list[str] = []
    with Connection(app.conf.broker_url, transport=app.conf.broker_transport) as conn:
        def on_message(body, message):  # type: ignore[no-untyped-def]
            delivered.append(message.headers["id"])
            message.ack()

        with Consumer(conn, queues=list(app.conf.task_queues), callbacks=[on_message], accept=["json"]):
            deadline = time.monotonic() + 10
            while len(delivered) < 2 and time.monotonic() < deadline:
                try:
                    conn.drain_events(timeout=1)
                except TimeoutError:
                    pass
    assert len(delivered) == 2 and first in delivered
    claims = [claim_job(factory, job_id, task, heartbeat_timeout_s=60) for task in delivered]
    assert claims == [True, False]  # the second delivery leaves while the first runs
    with session_scope(factory) as s:
        s.get(Job, job_id).state = JobState.done
    assert not claim_job(factory, job_id, delivered[1], heartbeat_timeout_s=60)  # and after it finished


def test_admin_retry_of_a_stuck_queued_job_sends_it_again(cfg, factory) -> None:  # type: ignore[no-untyped-def]
    from fastapi.testclient import TestClient

    from dicom_node.admin import create_app
    from dicom_node.index.live_config import LiveConfig

    dispatcher, job_id, lost = _queued_and_sent(cfg, factory)
    admin_cfg = parse_config({**cfg.model_dump(mode="json"), "admin": {"tokens": {"t" * 24: "admin"}}}, environ={})
    client = TestClient(create_app(LiveConfig(admin_cfg, factory), factory, web_dir=None))
    r = client.post(f"/api/jobs/{job_id}/retry", headers={"Authorization": f"Bearer {'t' * 24}"})
    assert r.status_code == 200 and r.json()["state"] == "queued"
    assert dispatcher.dispatch_pending() == 1
    with factory() as s:
        assert s.get(Job, job_id).task_id not in ("", lost)


def test_a_stopping_worker_releases_its_job_after_the_chunk_being_written(tmp_path: Path, stored) -> None:  # type: ignore[no-untyped-def]
    from sqlalchemy import event

    from dicom_node.pipeline import route_series
    from tests.pipeline.test_jobs import make_cfg
    from workers import process

    factory, series_pk, _ = stored
    cfg = make_cfg(tmp_path, [{"match": {"modality": "CT"}, "model": "bicubic", "destinations": ["PACS"]}],
                   worker={"batch_size": 1})
    (job_id,) = route_series(cfg, factory, series_pk)

    def sigterm_after_first_slice(session) -> None:  # type: ignore[no-untyped-def]
        with factory.kw["bind"].connect() as conn:
            if conn.execute(select(Job.progress_done).where(Job.id == job_id)).scalar_one() >= 1:
                process.request_stop()  # what workers/cli.py does on SIGTERM

    event.listen(factory, "after_commit", sigterm_after_first_slice)
    try:
        model_cache.clear()
        assert process.run_job(cfg, factory, job_id, "cpu", "t1") == "released"
    finally:
        event.remove(factory, "after_commit", sigterm_after_first_slice)
        process._STOP.clear()
    with factory() as s:
        job = s.get(Job, job_id)
        # Queued again at once, no task (the dispatcher sends it now), and not a failed attempt.
        assert (job.state, job.task_id, job.attempts, job.heartbeat_at) == (JobState.queued, "", 0, None)
        assert job.progress_done == 2 and job.progress_total == 3  # the chunk in the writer was committed
    assert process.run_job(cfg, factory, job_id, "cpu", "t2") == "done"  # another worker resumes
    with factory() as s:
        job = s.get(Job, job_id)
        assert job.progress_done == 3 and job.attempts == 1



def test_broker_connection_loss_keeps_running_jobs_without_a_warning(tmp_path: Path) -> None:
    # The job row is the truth (a redelivered copy is dropped by the claim), so a reconnect keeps
    # the task running, and Celery's pending-deprecation warning about it is not printed each time.
    import subprocess
    import sys

    from config.loader import parse_config
    from tests.conftest import REPO_ROOT

    cfg = parse_config({"node": {"storage_dir": str(tmp_path / "s")}, "broker_url": "redis://127.0.0.1:1/0",
                        "routing": [{"match": {"modality": "CT"}, "model": "bicubic"}]}, base_dir=tmp_path, environ={})
    assert make_celery(cfg).conf.worker_cancel_long_running_tasks_on_connection_loss is False
    code = ("import warnings, workers.app\n"
            "from celery.exceptions import CPendingDeprecationWarning\n"
            "from celery.worker.consumer.consumer import CANCEL_TASKS_BY_DEFAULT\n"
            "warnings.warn(CANCEL_TASKS_BY_DEFAULT, CPendingDeprecationWarning)\n"
            "warnings.warn('another warning', CPendingDeprecationWarning)\n")
    done = subprocess.run([sys.executable, "-W", "default", "-c", code], cwd=REPO_ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "breaking change" not in done.stderr and "another warning" in done.stderr  # only that one is quiet
