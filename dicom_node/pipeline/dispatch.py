"""The only sender of tasks: queued jobs without a task go to the broker; dead workers' jobs come back."""
from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Iterable
from datetime import datetime, timedelta, timezone

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from config.schema import SRNodeConfig
from dicom_node.index.db import session_scope
from dicom_node.index.models import Job, JobState
from dicom_node.polling import PollingThread

log = logging.getLogger(__name__)

ACTIVE_STATES = (JobState.queued, JobState.running)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Dispatcher:
    """Sends queued jobs to the broker and requeues jobs whose worker stopped beating."""

    def __init__(self, cfg: SRNodeConfig, factory: sessionmaker[Session], poll_s: float = 1.0) -> None:
        from workers.app import make_celery  # the producer side of the same app the workers run

        self.cfg = cfg
        self.factory = factory
        self.app = make_celery(cfg)
        self._lock = threading.Lock()
        self._poller = PollingThread("srnode-dispatch", self._pass, poll_s, "job dispatch", log)

    def start(self) -> None:
        """Start the dispatch loop."""
        self._poller.start()

    def stop(self) -> None:
        """Stop the loop."""
        self._poller.stop()

    def wake(self) -> None:
        """Dispatch now instead of at the next poll."""
        self._poller.wake()

    def _pass(self) -> None:
        self.requeue_stale()
        self.dispatch_pending()

    def reset_all_active(self) -> int:
        """Every queued/running job back to queued without a task (its worker died with the node);
        a running one that is out of attempts fails instead. Returns how many were queued."""
        with session_scope(self.factory) as session:
            running = session.scalars(select(Job).where(Job.state == JobState.running))
            self._fail_exhausted(running, "its worker stopped with the node")
            result = session.execute(update(Job).where(Job.state.in_(ACTIVE_STATES))
                                     .values(state=JobState.queued, task_id="", heartbeat_at=None))
            return int(result.rowcount or 0)

    def requeue_stale(self) -> int:
        """Running jobs without a heartbeat for worker.heartbeat_timeout_s go back to queued, or
        fail once out of attempts (a job that kills its worker must not come back forever).
        Returns how many were queued again."""
        timeout = self.cfg.worker.heartbeat_timeout_s
        stale = utcnow() - timedelta(seconds=timeout)
        with session_scope(self.factory) as session:
            jobs = list(session.scalars(select(Job).where(Job.state == JobState.running, Job.heartbeat_at < stale)))
            jobs = self._fail_exhausted(jobs, f"no heartbeat from its worker for {timeout:.0f} s")
            for job in jobs:
                log.warning("job #%d: no heartbeat from its worker for %.0f s; queued again (at %d of %d slices)",
                            job.id, timeout, job.progress_done, job.progress_total)
                job.state, job.task_id, job.heartbeat_at = JobState.queued, "", None
            return len(jobs)

    def _fail_exhausted(self, jobs: Iterable[Job], why: str) -> list[Job]:
        """Fail the jobs out of attempts (their last error kept in the reason); returns the others."""
        left = []
        for job in jobs:
            if not job.out_of_attempts(self.cfg.worker.max_retries):
                left.append(job)
                continue
            last = f"; last error: {job.error}" if job.error else ""
            job.fail(f"gave up after {job.attempts} attempt(s): {why} at {job.progress_done} of "
                     f"{job.progress_total} slices{last}")
            job.task_id, job.heartbeat_at = "", None
            log.error("job #%d failed: %s after %d attempt(s)", job.id, why, job.attempts)
        return left

    def dispatch_pending(self) -> int:
        """Send a task for every queued job that has none; returns how many were sent."""
        from workers.app import TASK_PROCESS_JOB, queue_name

        with self.factory() as session:
            jobs = list(session.scalars(
                select(Job).where(Job.state == JobState.queued, Job.task_id == "")
                .order_by(Job.priority != "stat", Job.created_at, Job.id)))
        sent = 0
        for job in jobs:
            task_id = str(uuid.uuid4())
            with self._lock:
                self.app.send_task(TASK_PROCESS_JOB, args=[job.id], task_id=task_id,
                                   queue=queue_name(job.model, job.priority))
            # Sent first, recorded second: a crash in between only sends the job twice (harmless).
            with session_scope(self.factory) as session:
                session.execute(update(Job).where(Job.id == job.id, Job.task_id == "").values(task_id=task_id))
            sent += 1
        return sent
