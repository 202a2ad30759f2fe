"""route_series and run_job on a real SQLite index with real CT slices (in-process, no network)."""
from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
import torch
from sqlalchemy import select

from config.loader import parse_config
from dicom_node.index.db import make_engine, session_factory
from dicom_node.index.migrate import upgrade
from dicom_node.index.models import Instance, Job, JobState, Outbox, Series, SeriesState
from dicom_node.ingest import store_dataset
from dicom_node.pipeline import ensure_job, route_series
from tests.pipeline.dicom_checks import new_errors
from workers import model_cache
from workers.process import PermanentJobError, run_job

torch.set_num_threads(1)


def make_cfg(tmp_path: Path, routing: list[dict], **extra: object):  # type: ignore[no-untyped-def]
    return parse_config({
        "node": {"storage_dir": str(tmp_path / "storage"), "database_url": f"sqlite:///{tmp_path / 'index.db'}"},
        "peers": {"PACS": {"ae_title": "PACS", "host": "127.0.0.1", "port": 104}},
        "models": {"bicubic": {"arch": "bicubic", "scale": 2},
                   "missing": {"arch": "realesrgan", "weights": str(tmp_path / "nope.pth"), "scale": 4}},
        "routing": routing, **extra,
    }, environ={})


@pytest.fixture
def stored(tmp_path: Path, ct_dirs: list[Path]):  # type: ignore[no-untyped-def]
    """Three real CT slices stored and indexed as received; the series marked stable."""
    folder = next(d for d in ct_dirs if d.name.startswith("lung-pet-ct-dx"))
    cfg0 = make_cfg(tmp_path, [])
    engine = make_engine(cfg0.node.database_url)
    upgrade(cfg0.node.database_url, engine)
    factory = session_factory(engine)
    files = sorted(folder.glob("*.dcm"))[:3]
    for f in files:
        result = store_dataset(factory, cfg0.node.storage_dir, pydicom.dcmread(f), sender_ae="SCANNER")
    with factory() as s:
        s.get(Series, result.series_pk).state = SeriesState.stable
        s.commit()
    yield factory, result.series_pk, files
    engine.dispose()


def jobs(factory) -> list[Job]:  # type: ignore[no-untyped-def]
    with factory() as s:
        return list(s.query(Job).all())


def test_route_creates_one_job_and_is_idempotent(tmp_path: Path, stored) -> None:  # type: ignore[no-untyped-def]
    factory, series_pk, _ = stored
    cfg = make_cfg(tmp_path, [{"match": {"modality": "MR"}, "model": "bicubic"},
                              {"name": "ct", "match": {"modality": "CT"}, "model": "bicubic", "destinations": ["PACS"],
                               "priority": "stat"}])
    first = route_series(cfg, factory, series_pk)
    assert route_series(cfg, factory, series_pk) == first and len(first) == 1
    (job,) = jobs(factory)
    assert (job.rule_name, job.model, job.scale, job.priority, job.state) == ("ct", "bicubic", 2, "stat", JobState.queued)
    assert job.progress_total == 3 and job.derived_series_uid
    with factory() as s:
        assert s.get(Series, series_pk).state == SeriesState.routed


def test_skip_and_no_match_make_no_job(tmp_path: Path, stored) -> None:  # type: ignore[no-untyped-def]
    factory, series_pk, _ = stored
    assert route_series(make_cfg(tmp_path, [{"match": {"modality": "CT"}, "skip": True}]), factory, series_pk) == []
    assert route_series(make_cfg(tmp_path, [{"match": {"modality": "MR"}, "model": "bicubic"}]), factory, series_pk) == []
    assert jobs(factory) == []


def test_passthrough_queues_originals_and_failed_model_says_why(tmp_path: Path, stored) -> None:  # type: ignore[no-untyped-def]
    factory, series_pk, _ = stored
    cfg = make_cfg(tmp_path, [{"match": {"modality": "CT"}, "model": "missing", "destinations": ["PACS"],
                               "passthrough": True}])
    route_series(cfg, factory, series_pk)
    (job,) = jobs(factory)
    assert job.state == JobState.failed and "nope.pth" in job.error
    with factory() as s:
        originals = {i.id for i in s.query(Instance).filter(Instance.series_pk == series_pk)}
        assert {o.instance_pk for o in s.query(Outbox).all()} == originals


def test_on_demand_waits_for_ensure_job(tmp_path: Path, stored) -> None:  # type: ignore[no-untyped-def]
    factory, series_pk, _ = stored
    cfg = make_cfg(tmp_path, [{"match": {"modality": "CT"}, "model": "bicubic", "on_demand": True}])
    assert route_series(cfg, factory, series_pk) == [] and jobs(factory) == []
    job_id = ensure_job(cfg, factory, series_pk, 0)
    assert ensure_job(cfg, factory, series_pk, 0) == job_id
    assert jobs(factory)[0].state == JobState.queued


@pytest.mark.parametrize("encoding", ["classic", "enhanced"])
def test_run_job_writes_indexes_queues_and_resumes(tmp_path: Path, stored, encoding: str) -> None:  # type: ignore[no-untyped-def]
    factory, series_pk, files = stored
    cfg = make_cfg(tmp_path, [{"match": {"modality": "CT"}, "model": "bicubic", "destinations": ["PACS"]}],
                   output={"encoding": encoding, "transfer_syntax": "rle"})
    (job_id,) = route_series(cfg, factory, series_pk)
    model_cache.clear()
    assert run_job(cfg, factory, job_id, "cpu", "t1") == "done"
    assert run_job(cfg, factory, job_id, "cpu", "t2") == "skipped"  # done stays done
    with factory() as s:
        job = s.get(Job, job_id)
        derived = s.query(Series).filter(Series.series_uid == job.derived_series_uid).one()
        instances = s.query(Instance).filter(Instance.series_pk == derived.id).all()
        assert derived.derived_from_job == job_id and job.progress_done == 3
        assert len(instances) == (3 if encoding == "classic" else 1)
        assert s.query(Outbox).count() == len(instances)
        path = Path(cfg.node.storage_dir) / instances[0].file_path
    assert new_errors(path, files[0]) == set()
    if encoding == "classic":
        # A redelivered job re-derives nothing that is already there and adds no row.
        with factory() as s:
            s.get(Job, job_id).state = JobState.queued
            s.commit()
        assert run_job(cfg, factory, job_id, "cpu", "t3") == "done"
        with factory() as s:
            assert s.query(Instance).count() == 6 and s.query(Outbox).count() == 3


def test_model_changed_since_routing_is_permanent(tmp_path: Path, stored) -> None:  # type: ignore[no-untyped-def]
    factory, series_pk, _ = stored
    cfg = make_cfg(tmp_path, [{"match": {"modality": "CT"}, "model": "bicubic"}])
    (job_id,) = route_series(cfg, factory, series_pk)
    with factory() as s:
        s.get(Job, job_id).checkpoint_sha256 = "0" * 64
        s.commit()
    with pytest.raises(PermanentJobError, match="re-route"):
        run_job(cfg, factory, job_id, "cpu", "t1")


def test_missing_source_file_is_retried_then_fails_with_reason(tmp_path: Path, stored) -> None:  # type: ignore[no-untyped-def]
    """What a remote worker without the shared storage sees: retries with backoff, then a clear error."""
    from workers.app import TASK_PROCESS_JOB, make_celery
    from workers.tasks import WorkerRuntime, register_tasks

    factory, series_pk, _ = stored
    cfg = make_cfg(tmp_path, [{"match": {"modality": "CT"}, "model": "bicubic"}], worker={"max_retries": 2})
    (job_id,) = route_series(cfg, factory, series_pk)
    with factory() as s:
        first = s.query(Instance).filter(Instance.series_pk == series_pk).first()
        (Path(cfg.node.storage_dir) / first.file_path).unlink()
    app = make_celery(cfg)
    app.conf.task_always_eager = True  # retries run in-process, immediately
    register_tasks(app, WorkerRuntime(cfg=cfg, factory=factory, device="cpu"))
    assert app.tasks[TASK_PROCESS_JOB].apply(args=[job_id]).get() == "failed"
    (job,) = jobs(factory)
    assert job.state == JobState.failed and job.attempts == 3
    assert "gave up after 2 retries" in job.error and "FileNotFoundError" in job.error


def test_job_identity_uses_the_weights_sha256(tmp_path: Path, shared_dir: Path) -> None:
    import hashlib

    from dicom_node.pipeline import checkpoint_digest

    weights = shared_dir / "weights" / "RealESRGAN_x4plus_anime_6B.pth"
    cfg = parse_config({"models": {"esrgan": {"arch": "realesrgan", "weights": str(weights), "scale": 4}}}, environ={})
    assert checkpoint_digest(cfg, "esrgan") == (hashlib.sha256(weights.read_bytes()).hexdigest(), 4)


def test_cancel_while_running_stops_after_the_chunk_being_written(tmp_path: Path, stored) -> None:  # type: ignore[no-untyped-def]
    from sqlalchemy import event, update

    factory, series_pk, files = stored
    cfg = make_cfg(tmp_path, [{"match": {"modality": "CT"}, "model": "bicubic", "destinations": ["PACS"]}],
                   worker={"batch_size": 1})
    (job_id,) = route_series(cfg, factory, series_pk)
    engine = factory.kw["bind"]
    cancelled_at: list[int] = []

    def cancel_after_first_slice(session) -> None:  # type: ignore[no-untyped-def]
        # An admin cancels right after the first chunk is committed (as POST /api/jobs/N/cancel does).
        if cancelled_at:
            return
        with engine.begin() as conn:
            done = conn.execute(select(Job.progress_done).where(Job.id == job_id)).scalar_one()
            if done >= 1:
                conn.execute(update(Job).where(Job.id == job_id).values(state=JobState.cancelled))
                cancelled_at.append(done)

    event.listen(factory, "after_commit", cancel_after_first_slice)
    try:
        model_cache.clear()
        assert run_job(cfg, factory, job_id, "cpu", "t1") == "cancelled"
    finally:
        event.remove(factory, "after_commit", cancel_after_first_slice)
    assert cancelled_at == [1]
    with factory() as s:
        job = s.get(Job, job_id)
        # The chunk in the writer when the cancel landed is kept whole; nothing after it.
        assert job.state is JobState.cancelled and job.progress_done == 2
        derived = s.query(Series).filter(Series.series_uid == job.derived_series_uid).one()
        assert s.query(Instance).filter(Instance.series_pk == derived.id).count() == 2
        assert s.query(Outbox).count() == 2
