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


def _store_series(tmp_path: Path, ct_dirs: list[Path], n: int):  # type: ignore[no-untyped-def]
    """`n` real CT slices stored and indexed as received; the series marked stable."""
    folder = next(d for d in ct_dirs if d.name.startswith("lung-pet-ct-dx"))
    cfg0 = make_cfg(tmp_path, [])
    engine = make_engine(cfg0.node.database_url)
    upgrade(cfg0.node.database_url, engine)
    factory = session_factory(engine)
    files = sorted(folder.glob("*.dcm"))[:n]
    for f in files:
        result = store_dataset(factory, cfg0.node.storage_dir, pydicom.dcmread(f), sender_ae="SCANNER")
    with factory() as s:
        s.get(Series, result.series_pk).state = SeriesState.stable
        s.commit()
    return engine, factory, result.series_pk, files


@pytest.fixture
def stored(tmp_path: Path, ct_dirs: list[Path]):  # type: ignore[no-untyped-def]
    """Three real CT slices stored and indexed as received; the series marked stable."""
    engine, factory, series_pk, files = _store_series(tmp_path, ct_dirs, 3)
    yield factory, series_pk, files
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
    assert (job.rule_name, job.model, job.scale, job.priority, job.state) == \
        ("ct", "bicubic", 2, "stat", JobState.queued)
    assert job.progress_total == 3 and job.derived_series_uid
    with factory() as s:
        assert s.get(Series, series_pk).state == SeriesState.routed


def test_skip_and_no_match_make_no_job(tmp_path: Path, stored) -> None:  # type: ignore[no-untyped-def]
    factory, series_pk, _ = stored
    assert route_series(make_cfg(tmp_path, [{"match": {"modality": "CT"}, "skip": True}]), factory, series_pk) == []
    mr_only = make_cfg(tmp_path, [{"match": {"modality": "MR"}, "model": "bicubic"}])
    assert route_series(mr_only, factory, series_pk) == []
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


def _eager_task(cfg, factory, device: str = "cpu"):  # type: ignore[no-untyped-def]
    """The real process_job task, run in-process (retries too, at once)."""
    from dicom_node.broker import TASK_PROCESS_JOB
    from workers.app import make_celery
    from workers.tasks import WorkerRuntime, register_tasks

    app = make_celery(cfg)
    app.conf.task_always_eager = True
    register_tasks(app, WorkerRuntime(cfg=cfg, factory=factory, device=device))
    return app.tasks[TASK_PROCESS_JOB]


@pytest.mark.parametrize("gone", ["one", "all"])
def test_missing_source_file_is_retried_then_ends_with_reason(tmp_path: Path, stored, gone: str) -> None:  # type: ignore[no-untyped-def]
    """One file gone: the others are derived, the job retries for it (an NFS hiccup heals), then ends
    done_with_errors naming it. All gone (a remote worker without the shared storage): failed."""
    factory, series_pk, _ = stored
    cfg = make_cfg(tmp_path, [{"match": {"modality": "CT"}, "model": "bicubic"}], worker={"max_retries": 2})
    (job_id,) = route_series(cfg, factory, series_pk)
    with factory() as s:
        sources = s.query(Instance).filter(Instance.series_pk == series_pk).order_by(Instance.id).all()
        removed = sources[:1] if gone == "one" else sources
        for inst in removed:
            (Path(cfg.node.storage_dir) / inst.file_path).unlink()
    model_cache.clear()
    expected = JobState.done_with_errors if gone == "one" else JobState.failed
    assert _eager_task(cfg, factory).apply(args=[job_id]).get() == expected.value
    (job,) = jobs(factory)
    assert job.state == expected and job.attempts == 3 and job.finished_at is not None
    assert job.progress_done == 3 - len(removed)
    assert job.error.startswith(f"gave up after 2 retries: {len(removed)} of 3 slice(s) not derived")
    assert all(f"{inst.sop_instance_uid}: FileNotFoundError" in job.error for inst in removed)


def _corrupt(path: Path, **changes: object) -> str:
    """Rewrite a stored file in place (as a disk fault or a bad sender would); returns its SOP UID."""
    ds = pydicom.dcmread(path)
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    ds.save_as(path)
    return str(ds.SOPInstanceUID)


def test_bad_slices_are_named_and_the_others_derived_and_queued(tmp_path: Path, ct_dirs: list[Path], caplog) -> None:  # type: ignore[no-untyped-def]
    """Issue 14 item 3: a slice with empty PixelData (and one whose geometry cannot be derived) used to
    raise TypeError in the task and leave the job running forever; now the job ends done_with_errors."""
    engine, factory, series_pk, files = _store_series(tmp_path, ct_dirs, 6)
    try:
        cfg = make_cfg(tmp_path, [{"match": {"modality": "CT"}, "model": "bicubic", "destinations": ["PACS"]}],
                       worker={"batch_size": 4, "max_retries": 2})
        (job_id,) = route_series(cfg, factory, series_pk)
        storage = Path(cfg.node.storage_dir)
        with factory() as s:
            paths = [storage / i.file_path for i in s.query(Instance).filter(Instance.series_pk == series_pk)]
        no_pixels = _corrupt(paths[2], PixelData=b"")
        odd_geometry = _corrupt(paths[4], PixelSpacing=[0.7])  # one value: no column spacing to scale
        source = pydicom.dcmread(files[0], stop_before_pixels=True)
        model_cache.clear()
        assert _eager_task(cfg, factory).apply(args=[job_id]).get() == "done_with_errors"
        with factory() as s:
            job = s.get(Job, job_id)
            assert job.state == JobState.done_with_errors and job.attempts == 1  # no retry for bad data
            assert job.progress_done == 4 and job.progress_total == 6
            assert job.error.startswith("2 of 6 slice(s) not derived")
            assert f"{no_pixels}: ValueError: the instance has no pixel data" in job.error
            assert f"{odd_geometry}: TypeError" in job.error
            derived = s.query(Series).filter(Series.series_uid == job.derived_series_uid).one()
            assert s.query(Instance).filter(Instance.series_pk == derived.id).count() == 4
            assert s.query(Outbox).filter(Outbox.job_pk == job_id).count() == 4  # the good ones go out
        # One line per bad slice, and no patient data in any line.
        for uid in (no_pixels, odd_geometry):
            assert sum(uid in r.getMessage() for r in caplog.records if r.name == "workers.process") == 1
        assert str(source.PatientID) not in caplog.text and str(source.PatientName) not in caplog.text
        # A finished-with-errors job is finished: a redelivery leaves it alone.
        assert run_job(cfg, factory, job_id, "cpu", "again") == "skipped"
    finally:
        engine.dispose()


def test_a_batch_that_fails_is_retried_slice_by_slice(tmp_path: Path) -> None:
    """model.upscale fails a whole batch for one bad slice: only that slice is recorded."""
    import numpy as np

    from workers.process import _upscale_isolating

    cfg = make_cfg(tmp_path, [])
    model_cache.clear()
    model = model_cache.get_model(cfg, "bicubic", "cpu")
    good = np.zeros((8, 8), np.float32)
    bad = np.zeros((2, 8, 8), np.float32)  # decoded as two frames: the model refuses it
    failed: list[int] = []
    out = _upscale_isolating(model, model.mapping("CT"), [(0, None, good), (1, None, bad), (2, None, good)],
                             lambda i, exc: failed.append(i))
    assert failed == [1] and [i for i, _, _ in out] == [0, 2] and out[0][2].shape == (16, 16)


def test_unforeseen_error_type_is_stored_and_retries_are_bounded(tmp_path: Path, stored) -> None:  # type: ignore[no-untyped-def]
    """A TypeError (not in TRANSIENT or PERMANENT) used to escape the task and leave the job running."""
    factory, series_pk, _ = stored
    cfg = make_cfg(tmp_path, [{"match": {"modality": "CT"}, "model": "bicubic"}], worker={"max_retries": 1})
    (job_id,) = route_series(cfg, factory, series_pk)
    model_cache.clear()
    # A worker started with a device torch cannot parse: TypeError from torch.device.
    assert _eager_task(cfg, factory, device=0.5).apply(args=[job_id]).get() == "failed"  # type: ignore[arg-type]
    (job,) = jobs(factory)
    assert job.state == JobState.failed and job.attempts == 2
    assert job.error.startswith("gave up after 1 retries: TypeError")


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
