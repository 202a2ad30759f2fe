"""The only sender of tasks: queued jobs without a task go to the broker; dead workers' jobs come back."""
from __future__ import annotations

import logging
import threading
import uuid
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
        """Every queued/running job back to queued without a task (its worker died with the node)."""
        with session_scope(self.factory) as session:
            result = session.execute(update(Job).where(Job.state.in_(ACTIVE_STATES))
                                     .values(state=JobState.queued, task_id="", heartbeat_at=None))
            return int(result.rowcount or 0)

    def requeue_stale(self) -> int:
        """Running jobs without a heartbeat for worker.heartbeat_timeout_s go back to queued."""
        stale = utcnow() - timedelta(seconds=self.cfg.worker.heartbeat_timeout_s)
        with session_scope(self.factory) as session:
            jobs = list(session.scalars(select(Job).where(Job.state == JobState.running, Job.heartbeat_at < stale)))
            for job in jobs:
                log.warning("job #%d: no heartbeat from its worker for %.0f s; queued again (at %d of %d slices)",
                            job.id, self.cfg.worker.heartbeat_timeout_s, job.progress_done, job.progress_total)
                job.state, job.task_id, job.heartbeat_at = JobState.queued, "", None
            return len(jobs)

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
