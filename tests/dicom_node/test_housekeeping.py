"""Housekeeping (dicom_node/housekeeping.py) on real SQLite files and a real PostgreSQL database:
rows past their limits go, newer ones and anything still needed stay, the WAL file shrinks, a
sparse SQLite file is vacuumed, stale temp files go, and the service runs a pass when the node starts."""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select, text
from sqlalchemy.orm import Session, sessionmaker

from config.schema import HousekeepingConfig
from dicom_node import housekeeping
from dicom_node.housekeeping import run_pass
from dicom_node.index.db import make_engine, session_factory, session_scope
from dicom_node.index.migrate import upgrade
from dicom_node.index.models import (
    Audit,
    Instance,
    Job,
    JobState,
    Outbox,
    OutboxState,
    Patient,
    Series,
    Study,
    Worker,
)
from dicom_node.server import NodeServer
from tests.dicom_node.conftest import node_config

NOW = datetime.now(UTC)


def days_ago(n: float) -> datetime:
    return NOW - timedelta(days=n)


@pytest.fixture
def index(database_url: str) -> tuple[Engine, sessionmaker[Session]]:
    engine = make_engine(database_url)
    upgrade(database_url, engine)
    yield engine, session_factory(engine)
    engine.dispose()


def add_series(session: Session, uid: str, n_instances: int, derived_from_job: int | None = None) -> Series:
    patient = session.scalar(select(Patient)) or Patient(patient_id="HK", issuer="")
    study = session.scalar(select(Study)) or Study(patient=patient, study_uid="1.2.3")
    series = Series(study=study, series_uid=uid, modality="CT", derived_from_job=derived_from_job)
    session.add(series)
    for i in range(n_instances):
        session.add(Instance(series=series, sop_instance_uid=f"{uid}.{i + 1}", file_path=f"x/{uid}.{i + 1}.dcm"))
    session.flush()
    return series


def count(factory: sessionmaker[Session], model: type, *where: object) -> int:
    with factory() as session:
        return int(session.scalar(select(func.count()).select_from(model).where(*where)) or 0)


def drop_series_keep_jobs(engine: Engine, series_pk: int) -> None:
    """A series recycled while its job rows are kept as history (retention.keep_job_history):
    the foreign key is bypassed here the way such a recycle leaves the index."""
    delete = [("DELETE FROM instance WHERE series_pk = :pk", {"pk": series_pk}),
              ("DELETE FROM series WHERE id = :pk", {"pk": series_pk})]
    if engine.dialect.name == "sqlite":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("PRAGMA foreign_keys=OFF")  # takes effect outside a transaction only
            for sql, params in delete:
                conn.execute(text(sql), params)
            conn.exec_driver_sql("PRAGMA foreign_keys=ON")
        return
    with engine.begin() as conn:
        conn.exec_driver_sql("SET LOCAL session_replication_role = replica")
        for sql, params in delete:
            conn.execute(text(sql), params)


def test_rows_past_their_limits_go_newer_and_needed_ones_stay(index: tuple[Engine, sessionmaker[Session]],
                                                            tmp_path: Path) -> None:
    engine, factory = index
    with session_scope(factory) as s:
        kept_series = add_series(s, "1.2.3.1", 4)
        gone_series = add_series(s, "1.2.3.2", 1)
        inst = [i.id for i in kept_series.instances]
        old_job = Job(series_pk=kept_series.id, model="bicubic", state=JobState.done, finished_at=days_ago(90))
        orphan = Job(series_pk=gone_series.id, rule_name="r2", model="bicubic", state=JobState.done,
                     finished_at=days_ago(90))
        young_orphan = Job(series_pk=gone_series.id, rule_name="r3", model="bicubic", state=JobState.failed,
                           finished_at=days_ago(2))
        s.add_all([old_job, orphan, young_orphan])
        s.flush()
        s.add_all([
            Outbox(instance_pk=inst[0], destination="A", state=OutboxState.delivered, delivered_at=days_ago(8)),
            Outbox(instance_pk=inst[1], destination="A", state=OutboxState.delivered, delivered_at=days_ago(6)),
            # Pending (waiting for a peer down for weeks) and failed rows are never pruned, however old.
            Outbox(instance_pk=inst[2], destination="A", state=OutboxState.pending, created_at=days_ago(60),
                   next_attempt_at=days_ago(60), sent_at=days_ago(60)),
            Outbox(instance_pk=inst[3], destination="A", state=OutboxState.failed, created_at=days_ago(60)),
            Audit(action="old", at=days_ago(400)), Audit(action="recent", at=days_ago(300)),
            Worker(name="w-old@h", last_seen_at=days_ago(8)), Worker(name="w-new@h", last_seen_at=days_ago(1)),
        ])
        ids = {"old_job": old_job.id, "orphan": orphan.id, "young_orphan": young_orphan.id}
    drop_series_keep_jobs(engine, gone_series.id)

    report = run_pass(HousekeepingConfig(), engine, factory, tmp_path, now=NOW)

    assert (report.outbox, report.jobs, report.audit, report.workers) == (1, 1, 1, 1)
    with factory() as s:
        assert sorted(o.instance_pk for o in s.scalars(select(Outbox))) == inst[1:]
        assert s.scalars(select(Outbox.state).where(Outbox.instance_pk == inst[2])).one() == OutboxState.pending
        # The job of a series that still exists stays (ensure_job finds it), as does a young orphan.
        assert sorted(s.scalars(select(Job.id))) == sorted([ids["old_job"], ids["young_orphan"]])
        assert list(s.scalars(select(Audit.action))) == ["recent"]
        assert list(s.scalars(select(Worker.name))) == ["w-new@h"]
    # A second pass finds nothing more.
    again = run_pass(HousekeepingConfig(), engine, factory, tmp_path, now=NOW)
    assert (again.outbox, again.jobs, again.audit, again.workers) == (0, 0, 0, 0)


def test_a_job_is_kept_while_its_derived_series_exists(index: tuple[Engine, sessionmaker[Session]],
                                                      tmp_path: Path) -> None:
    engine, factory = index
    with session_scope(factory) as s:
        source = add_series(s, "1.2.3.1", 1)
        job = Job(series_pk=source.id, model="bicubic", state=JobState.done, finished_at=days_ago(90))
        s.add(job)
        s.flush()
        add_series(s, "1.2.3.9", 1, derived_from_job=job.id)
    drop_series_keep_jobs(engine, source.id)
    assert run_pass(HousekeepingConfig(), engine, factory, tmp_path, now=NOW).jobs == 0
    assert count(factory, Job) == 1


def test_many_rows_go_in_batches(index: tuple[Engine, sessionmaker[Session]], tmp_path: Path) -> None:
    engine, factory = index
    with session_scope(factory) as s:
        s.add_all([Audit(action="a", at=days_ago(500)) for _ in range(4500)])
        s.add(Audit(action="keep", at=days_ago(1)))
    assert run_pass(HousekeepingConfig(), engine, factory, tmp_path, now=NOW).audit == 4500
    assert count(factory, Audit) == 1


def test_wal_file_shrinks_and_sparse_file_is_vacuumed(sqlite_url: str, tmp_path: Path) -> None:
    engine = make_engine(sqlite_url)
    upgrade(sqlite_url, engine)
    factory = session_factory(engine)
    db = Path(sqlite_url[len("sqlite:///"):])
    wal = Path(f"{db}-wal")
    with session_scope(factory) as s:
        s.add_all([Audit(action="a", detail="x" * 400, at=days_ago(500)) for _ in range(30000)])
    with session_scope(factory) as s:
        s.add(Audit(action="keep", at=days_ago(1)))
    wal_before, size_before = wal.stat().st_size, db.stat().st_size
    assert wal_before > 1 << 20  # sqlite's automatic checkpoints never shrink the file

    report = run_pass(HousekeepingConfig(), engine, factory, tmp_path, now=NOW)

    assert report.audit == 30000 and report.vacuumed and report.free_ratio and report.free_ratio > 0.9
    assert report.wal_bytes_before == wal_before and report.wal_bytes_after == 0
    assert wal.stat().st_size == 0
    assert db.stat().st_size < size_before / 10
    assert count(factory, Audit) == 1
    # Nothing left to vacuum: the next pass leaves the file alone.
    assert run_pass(HousekeepingConfig(), engine, factory, tmp_path, now=NOW).vacuumed is False
    engine.dispose()


def test_stale_temp_files_go_and_stored_files_stay(sqlite_url: str, tmp_path: Path) -> None:
    engine = make_engine(sqlite_url)
    upgrade(sqlite_url, engine)
    storage = tmp_path / "storage" / "1.2" / "1.2.3"
    storage.mkdir(parents=True)
    stale, stored = storage / ".tmp-otherhost-1-abc.part", storage / "1.2.3.4.dcm"
    for path in (stale, stored):
        path.write_bytes(b"x")
        os.utime(path, (time.time() - 3600, time.time() - 3600))  # older than STALE_TEMP_AGE_S
    report = run_pass(HousekeepingConfig(), engine, session_factory(engine), tmp_path / "storage")
    assert report.temp_files == 1 and not stale.exists() and stored.exists()
    engine.dispose()


def test_the_node_runs_a_pass_when_it_starts(sqlite_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                            start_node: Callable[..., NodeServer]) -> None:
    cfg = node_config(tmp_path, sqlite_url)
    engine = make_engine(sqlite_url)
    upgrade(sqlite_url, engine)
    with session_scope(session_factory(engine)) as s:
        s.add(Audit(action="old", at=days_ago(400)))
    engine.dispose()
    caplog.set_level(logging.INFO, logger="dicom_node.housekeeping")
    node = start_node(cfg, services=[housekeeping.make_service])
    def pass_lines() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.getMessage().startswith("housekeeping:")]

    # The pass line comes after the whole pass (checkpoint, VACUUM check), a moment after the rows go.
    deadline = time.monotonic() + 10
    while (count(node.session_factory, Audit) or not pass_lines()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert count(node.session_factory, Audit) == 0
    lines = pass_lines()
    assert len(lines) == 1 and "1 audit row(s)" in lines[0]
    from dicom_node.wiring import SERVICES  # imports the pipeline (torch): here only

    assert housekeeping.make_service in SERVICES  # and `srnode serve` starts it


def test_housekeeping_can_be_switched_off(sqlite_url: str, tmp_path: Path,
                                          start_node: Callable[..., NodeServer]) -> None:
    cfg = node_config(tmp_path, sqlite_url).model_copy(
        update={"housekeeping": HousekeepingConfig(enabled=False)})
    node = start_node(cfg, services=[housekeeping.make_service])
    assert not any(type(s).__name__ == "HousekeepingService" for s in node.services)
