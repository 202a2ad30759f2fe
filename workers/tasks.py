"""Celery tasks: thin wrappers that take a job id and call workers.process.run_job."""
from __future__ import annotations

import logging
from dataclasses import dataclass

from celery import Celery
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from config.schema import SRNodeConfig
from sr_engine.archs import CheckpointError
from sr_engine.registry import UnknownModelError
from workers.app import TASK_PROCESS_JOB
from workers.process import PermanentJobError, fail_job, requeue_job, run_job

log = logging.getLogger(__name__)

# Errors that another attempt may not hit: the database was busy, a file system hiccup,
# the GPU ran out of memory for a moment.
TRANSIENT = (OperationalError, OSError, TimeoutError, RuntimeError)
PERMANENT = (PermanentJobError, CheckpointError, UnknownModelError, ValueError, KeyError, AttributeError)


@dataclass
class WorkerRuntime:
    """What tasks in this process use: config, index sessions, torch device."""

    cfg: SRNodeConfig
    factory: sessionmaker[Session]
    device: str


def register_tasks(app: Celery, runtime: WorkerRuntime) -> None:
    """Register the process_job task on `app`, bound to this process's runtime."""

    @app.task(name=TASK_PROCESS_JOB, bind=True, acks_late=True, reject_on_worker_lost=True, max_retries=None)
    def process_job(self, job_id: int) -> str:  # type: ignore[no-untyped-def]
        """Upscale one job's series; idempotent, so redelivery and retries are safe."""
        try:
            return run_job(runtime.cfg, runtime.factory, int(job_id), runtime.device, self.request.id or "")
        except PERMANENT as exc:
            log.error("job #%s failed: %s", job_id, exc)
            fail_job(runtime.factory, int(job_id), f"{type(exc).__name__}: {exc}")
            return "failed"
        except TRANSIENT as exc:
            retries = self.request.retries
            if retries >= runtime.cfg.worker.max_retries:
                log.error("job #%s failed after %d retries: %s", job_id, retries, exc)
                fail_job(runtime.factory, int(job_id), f"gave up after {retries} retries: {type(exc).__name__}: {exc}")
                return "failed"
            delay = min(300, 2 ** (retries + 1))
            log.warning("job #%s: transient error (%s); retry %d in %d s", job_id, exc, retries + 1, delay)
            requeue_job(runtime.factory, int(job_id), f"retrying: {type(exc).__name__}: {exc}")
            raise self.retry(countdown=delay, exc=exc)
