"""Housekeeping: trim what grows besides the archive itself (docs/storage.md, "Housekeeping").

One pass at node start and then every `housekeeping.interval_h`:

- delivered outbox rows older than `outbox_delivered_days` (pending and failed rows stay: one is
  still to be sent, the other needs an operator);
- finished job rows older than `jobs_days` that nothing can find or points at any more: their
  source series, their derived series and their outbox rows are gone (while its series exists, a
  job row is what `pipeline.jobs.ensure_job` finds instead of deriving the series a second time);
- audit rows older than `audit_days`; worker rows not seen for `workers_days`;
- SQLite only: VACUUM when free pages exceed `vacuum_free_ratio`, then a WAL checkpoint that
  truncates the -wal file (PostgreSQL's autovacuum does both there);
- temporary files of interrupted writes (`storage.remove_stale_temp_files`; not on the first pass,
  the node swept them when it started).

Rows go in small batches, each its own transaction, so the C-STORE path never waits long on the
SQLite write lock. One INFO line per pass with the counts.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import Engine, delete, exists, func, select
from sqlalchemy.engine import CursorResult
from sqlalchemy.orm import Session, sessionmaker

from config.schema import HousekeepingConfig
from dicom_node import metrics
from dicom_node.clock import utcnow
from dicom_node.index.db import session_scope
from dicom_node.index.models import (
    Audit,
    Job,
    JobState,
    Outbox,
    OutboxState,
    Series,
    Worker,
)
from dicom_node.polling import PollingThread
from dicom_node.storage import remove_stale_temp_files

if TYPE_CHECKING:
    from dicom_node.server import NodeServer

log = logging.getLogger(__name__)

BATCH_ROWS = 2000  # rows per delete transaction: a short write lock each
# The TRUNCATE checkpoint holds the writer lock while it waits for readers: wait this long at most.
CHECKPOINT_BUSY_MS = 250
SQLITE_BUSY_MS = 30_000  # what index.db.make_engine sets (timeout=30), restored afterwards
VACUUM_MIN_FREE_BYTES = 4 << 20  # below this a VACUUM gains nothing worth its write lock
ENDED_JOB_STATES = (JobState.done, JobState.done_with_errors, JobState.failed, JobState.cancelled)


@dataclass
class PassReport:
    """What one housekeeping pass removed and did."""

    outbox: int = 0
    jobs: int = 0
    audit: int = 0
    workers: int = 0
    temp_files: int = 0
    wal_bytes_before: int | None = None  # None: not SQLite
    wal_bytes_after: int | None = None
    free_ratio: float | None = None
    vacuumed: bool = False
    seconds: float = 0.0

    def line(self) -> str:
        """The pass's one INFO line (counts only, never patient data)."""
        parts = [f"{self.outbox} delivered outbox row(s)", f"{self.jobs} job row(s)", f"{self.audit} audit row(s)",
                 f"{self.workers} worker row(s)", f"{self.temp_files} temp file(s) removed"]
        if self.wal_bytes_before is not None:
            parts.append(f"WAL {self.wal_bytes_before / 1e6:.1f} -> {(self.wal_bytes_after or 0) / 1e6:.1f} MB")
            parts.append(f"free pages {100 * (self.free_ratio or 0):.0f}%" + (", vacuumed" if self.vacuumed else ""))
        return "housekeeping: " + ", ".join(parts) + f" in {self.seconds:.1f} s"


def _delete_batched(factory: sessionmaker[Session], model: Any, *where: Any) -> int:
    """Delete the rows of `model` matching `where`, BATCH_ROWS per transaction; returns how many.

    The condition is checked again in the DELETE, so a row that changed since it was selected
    (a worker seen again) stays.
    """
    total = 0
    while True:
        with session_scope(factory) as session:
            ids = list(session.scalars(select(model.id).where(*where).order_by(model.id).limit(BATCH_ROWS)))
            if ids:
                deleted = session.execute(delete(model).where(model.id.in_(ids), *where))
                total += cast("CursorResult[Any]", deleted).rowcount or 0
        if len(ids) < BATCH_ROWS:
            return total


def prune_delivered_outbox(factory: sessionmaker[Session], before: datetime) -> int:
    """Delivered outbox rows delivered before `before`."""
    return _delete_batched(factory, Outbox, Outbox.state == OutboxState.delivered, Outbox.delivered_at < before)


def prune_jobs(factory: sessionmaker[Session], before: datetime) -> int:
    """Ended jobs (finished before `before`) whose series, derived series and outbox rows are gone."""
    return _delete_batched(
        factory, Job,
        Job.state.in_(ENDED_JOB_STATES),
        func.coalesce(Job.finished_at, Job.created_at) < before,
        ~exists().where(Series.id == Job.series_pk),
        ~exists().where(Series.derived_from_job == Job.id),
        ~exists().where(Outbox.job_pk == Job.id),
    )


def prune_audit(factory: sessionmaker[Session], before: datetime) -> int:
    return _delete_batched(factory, Audit, Audit.at < before)


def prune_workers(factory: sessionmaker[Session], before: datetime) -> int:
    return _delete_batched(factory, Worker, Worker.last_seen_at < before)


def _wal_size(engine: Engine) -> int:
    wal = Path(f"{engine.url.database}-wal")
    return wal.stat().st_size if wal.exists() else 0


def sqlite_maintenance(engine: Engine, vacuum_free_ratio: float) -> tuple[int, int, float, bool]:
    """VACUUM if free pages are at least `vacuum_free_ratio` of the file, then checkpoint the WAL
    and truncate it. Returns (WAL bytes before, after, free-page ratio, vacuumed).

    VACUUM in WAL mode copies the whole database into the WAL, hence the checkpoint after it.
    """
    before = _wal_size(engine)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        pages = conn.exec_driver_sql("PRAGMA page_count").scalar() or 0
        free = conn.exec_driver_sql("PRAGMA freelist_count").scalar() or 0
        page_size = conn.exec_driver_sql("PRAGMA page_size").scalar() or 4096
        ratio = free / pages if pages else 0.0
        vacuumed = ratio >= vacuum_free_ratio and free * page_size >= VACUUM_MIN_FREE_BYTES
        if vacuumed:
            conn.exec_driver_sql("VACUUM")
        # PASSIVE copies what it can without blocking anyone; TRUNCATE then finishes and empties the
        # file, blocking writers only while it waits (CHECKPOINT_BUSY_MS at most) for readers.
        conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")
        conn.exec_driver_sql(f"PRAGMA busy_timeout = {CHECKPOINT_BUSY_MS}")
        try:
            busy = conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)").first()
        finally:
            conn.exec_driver_sql(f"PRAGMA busy_timeout = {SQLITE_BUSY_MS}")
    if busy and busy[0]:
        log.debug("housekeeping: WAL checkpoint busy (readers active); the next pass tries again")
    return before, _wal_size(engine), ratio, vacuumed


def run_pass(cfg: HousekeepingConfig, engine: Engine, factory: sessionmaker[Session], storage_dir: Path,
             sweep_temp: bool = True, now: datetime | None = None) -> PassReport:
    """One housekeeping pass (see the module docstring); logs and counts it, returns what it did."""
    t0, now = time.monotonic(), now or utcnow()
    days = timedelta(days=1)
    report = PassReport(
        outbox=prune_delivered_outbox(factory, now - cfg.outbox_delivered_days * days),
        jobs=prune_jobs(factory, now - cfg.jobs_days * days),
        audit=prune_audit(factory, now - cfg.audit_days * days),
        workers=prune_workers(factory, now - cfg.workers_days * days),
    )
    if sweep_temp:
        report.temp_files = remove_stale_temp_files(storage_dir)
    if engine.dialect.name == "sqlite" and engine.url.database not in (None, "", ":memory:"):
        (report.wal_bytes_before, report.wal_bytes_after, report.free_ratio,
         report.vacuumed) = sqlite_maintenance(engine, cfg.vacuum_free_ratio)
    report.seconds = time.monotonic() - t0
    for kind in ("outbox", "jobs", "audit", "workers", "temp_files"):
        metrics.HOUSEKEEPING_REMOVED.labels(kind).inc(getattr(report, kind))
    metrics.HOUSEKEEPING_PASSES.inc()
    log.info("%s", report.line())
    return report


class HousekeepingService:
    """run_pass at start (in the background) and every interval_h, with start()/stop()."""

    def __init__(self, cfg: HousekeepingConfig, engine: Engine, factory: sessionmaker[Session],
                 storage_dir: Path) -> None:
        self.cfg, self.engine, self.factory, self.storage_dir = cfg, engine, factory, storage_dir
        self._first = True
        self._thread = PollingThread("srnode-housekeeping", self._step, cfg.interval_h * 3600, "housekeeping", log)

    def _step(self) -> None:
        run_pass(self.cfg, self.engine, self.factory, self.storage_dir, sweep_temp=not self._first)
        self._first = False

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._thread.stop()


def make_service(node: NodeServer) -> HousekeepingService | None:
    """The housekeeping service of a node (None when housekeeping.enabled is false)."""
    cfg = node.cfg.housekeeping
    if not cfg.enabled:
        return None
    return HousekeepingService(cfg, node.engine, node.session_factory, node.storage_dir)
