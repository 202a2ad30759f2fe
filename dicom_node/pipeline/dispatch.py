"""The only sender of tasks: queued jobs without a task go to the broker; dead workers' jobs come back;
queued jobs whose broker message is gone are sent again (the job table is the source of truth)."""
from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import or_, select, update
from sqlalchemy.engine import CursorResult
from sqlalchemy.orm import Session, sessionmaker

from config.schema import SRNodeConfig
from dicom_node.broker import TASK_PROCESS_JOB, make_celery, queue_name
from dicom_node.clock import utcnow
from dicom_node.index.db import session_scope
from dicom_node.index.models import Job, JobState
from dicom_node.polling import PollingThread

log = logging.getLogger(__name__)

ACTIVE_STATES = (JobState.queued, JobState.running)

# A queued job whose message has been due this long without a worker claiming it is sent again.
# Long enough that a backlog is not resent often (a copy per job per lease; the claim drops the
# extra copies), short enough that a message lost outside a broker restart costs minutes, not the
# broker's one-hour visibility timeout. A broker restart or reconnect resends at once (BrokerWatch).
TASK_LEASE_S = 600.0
NODE_STARTED = "the node started"


class Dispatcher:
    """Sends queued jobs to the broker and requeues jobs whose worker stopped beating."""

    def __init__(self, cfg: SRNodeConfig, factory: sessionmaker[Session], poll_s: float = 1.0,
                 lease_s: float = TASK_LEASE_S) -> None:
        self.cfg = cfg
        self.factory = factory
        self.lease_s = lease_s
        self.app = make_celery(cfg)  # the sending side of the app the workers run; tasks go by name
        self.broker = BrokerWatch(cfg.broker_url)
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
        # Raises while the broker is away: the pass is retried (PollingThread logs it once).
        why = self.broker.changed()
        if why:
            self.resend_queued(why)
        else:
            self.resend_queued(f"not taken {self.lease_s:.0f} s after it was due", lease_s=self.lease_s)
        self.dispatch_pending()

    def resend_queued(self, why: str, lease_s: float | None = None) -> int:
        """Queued jobs that have a task id but whose message may be gone lose the task id, so the
        next dispatch sends them again: all of them (node start, broker back: `lease_s` None), or
        those whose message was due more than `lease_s` ago. A copy of a message that still exists
        is harmless: the claim is atomic and a running or finished job is not claimable. A message
        not yet due (retry countdown) is sent again with the rest of its countdown. Returns how many."""
        query = update(Job).where(Job.state == JobState.queued, Job.task_id != "")
        if lease_s is not None:
            expired = utcnow() - timedelta(seconds=lease_s)
            query = query.where(or_(Job.task_due_at.is_(None), Job.task_due_at < expired))
        with session_scope(self.factory) as session:
            ids = list(session.scalars(query.values(task_id="").returning(Job.id)))
        if ids:
            shown = ", ".join(f"#{i}" for i in sorted(ids)[:20]) + (" ..." if len(ids) > 20 else "")
            level = logging.INFO if why == NODE_STARTED else logging.WARNING  # a start is routine
            log.log(level, "%d queued job(s) sent again, their broker message may be gone (%s): %s",
                    len(ids), why, shown)
        return len(ids)

    def reset_all_active(self) -> int:
        """Every queued/running job back to queued without a task (its worker died with the node);
        a running one that is out of attempts fails instead. Returns how many were queued."""
        with session_scope(self.factory) as session:
            running = session.scalars(select(Job).where(Job.state == JobState.running))
            self._fail_exhausted(running, "its worker stopped with the node")
            result = session.execute(update(Job).where(Job.state.in_(ACTIVE_STATES))
                                     .values(state=JobState.queued, task_id="", heartbeat_at=None, task_due_at=None))
            return int(cast("CursorResult[Any]", result).rowcount or 0)

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
        with self.factory() as session:
            jobs = list(session.scalars(
                select(Job).where(Job.state == JobState.queued, Job.task_id == "")
                .order_by(Job.priority != "stat", Job.created_at, Job.id)))
        sent = 0
        for job in jobs:
            task_id = str(uuid.uuid4())
            now = utcnow()
            # A resent retry keeps the rest of its countdown (the backoff of a transient error).
            due = max(now, _aware(job.task_due_at) or now)
            with self._lock:
                self.app.send_task(TASK_PROCESS_JOB, args=[job.id], task_id=task_id,
                                   queue=queue_name(job.model, job.priority),
                                   countdown=(due - now).total_seconds() or None)
            # Sent first, recorded second: a crash in between only sends the job twice (harmless).
            with session_scope(self.factory) as session:
                session.execute(update(Job).where(Job.id == job.id, Job.task_id == "")
                                .values(task_id=task_id, task_due_at=due))
            sent += 1
        return sent


def _aware(at: datetime | None) -> datetime | None:
    """SQLite gives back naive datetimes (stored as UTC)."""
    return at.replace(tzinfo=UTC) if at is not None and at.tzinfo is None else at


class BrokerWatch:
    """Says when the broker may have lost its messages: at first contact (the node started; what
    was sent before is unknown), when it answers again after being unreachable, and when it is
    another server process than before (Redis `run_id`: restarted, maybe without persistence)."""

    def __init__(self, broker_url: str | None) -> None:
        self.broker_url = broker_url
        self._identity: str | None = None  # None: never reached
        self._down = False
        self._client: Any = None  # a redis.Redis, imported when first needed

    def changed(self) -> str:
        """Why queued jobs should be sent again now, or "" (raises while the broker is away)."""
        try:
            identity = self._probe()
        except Exception:
            self._down, self._client = True, None
            raise
        why = (NODE_STARTED if self._identity is None else
               "the broker is reachable again" if self._down else
               "the broker restarted" if identity != self._identity else "")
        self._identity, self._down = identity, False
        return why

    def _probe(self) -> str:
        """The broker's identity; a Redis server's run_id (other brokers: first contact only)."""
        if not self.broker_url or not self.broker_url.startswith(("redis://", "rediss://")):
            return ""
        if self._client is None:
            import redis
            from redis.backoff import NoBackoff
            from redis.retry import Retry

            # No retries: one probe per pass, and the pass itself is retried.
            self._client = redis.Redis.from_url(self.broker_url, socket_timeout=5, socket_connect_timeout=5,
                                                retry=Retry(NoBackoff(), 0))
        return str(self._client.info("server").get("run_id", ""))
