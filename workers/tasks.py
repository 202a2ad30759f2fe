"""Celery tasks: thin wrappers that take a job id and call workers.process.run_job."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from celery import Celery
from sqlalchemy.orm import Session, sessionmaker

from config.schema import SRNodeConfig
from dicom_node.broker import TASK_PROCESS_JOB
from sr_engine.archs import CheckpointError
from sr_engine.registry import UnknownModelError
from workers.health import HAND_BACK_DELAY_S, WorkerHealth
from workers.process import (
    TRANSIENT_ERRORS,
    PermanentJobError,
    error_reason,
    fail_job,
    retry_delay_s,
    retry_or_fail,
    run_job,
)

log = logging.getLogger(__name__)

TRANSIENT = TRANSIENT_ERRORS
PERMANENT = (PermanentJobError, CheckpointError, UnknownModelError, ValueError, KeyError, AttributeError)


@dataclass
class WorkerRuntime:
    """What tasks in this process use: config, index sessions, torch device."""

    cfg: SRNodeConfig
    factory: sessionmaker[Session]
    device: str
    # None: no checks (tests that drive the task in-process); `srnode worker` always has one.
    health: WorkerHealth | None = None

    @property
    def name(self) -> str:
        """This worker's name (job.last_failed_worker), "" without health checks."""
        return self.health.identity.name if self.health is not None else ""


def register_tasks(app: Celery, runtime: WorkerRuntime) -> None:
    """Register the process_job task on `app`, bound to this process's runtime."""

    # shared=False: a shared task would be bound into every Celery app made later in this process,
    # so a second app (tests, a reloaded worker) would run the first runtime's closure.
    @app.task(name=TASK_PROCESS_JOB, bind=True, acks_late=True, reject_on_worker_lost=True, max_retries=None,
              shared=False)
    def process_job(self, job_id: int) -> str:  # type: ignore[no-untyped-def]
        """Upscale one job's series; idempotent, so redelivery and retries are safe.

        Attempts are counted on the job row (`job.attempts`, shared with the dispatcher's requeue
        of a dead worker's job), not by Celery: after 1 + worker.max_retries the job fails.
        """
        job = int(job_id)
        why = runtime.health.hand_back_reason(job) if runtime.health is not None else ""
        if why:
            # Not claimed, attempts untouched: the same task id goes back on the same queue (no
            # countdown: an ETA message would sit in this idle worker's memory, out of the others' reach).
            if runtime.health.first_hand_back(job):  # type: ignore[union-attr]
                log.info("job #%d handed back to the queue: %s", job, why)
            time.sleep(HAND_BACK_DELAY_S)
            raise self.retry(countdown=0)
        try:
            return run_job(runtime.cfg, runtime.factory, job, runtime.device, self.request.id or "")
        except PERMANENT as exc:
            log.error("job #%d failed: %s", job, error_reason(exc))
            fail_job(runtime.factory, job, error_reason(exc))
            return "failed"
        except Exception as exc:  # noqa: BLE001 - transient, or a type nobody foresaw: see below
            # Slice data problems are already recorded per slice by run_job; an unforeseen type that
            # reaches here (TypeError...) is treated as transient: its error is stored and it gets
            # the bounded retries, so it can neither leave the job running nor loop forever.
            unforeseen = not isinstance(exc, TRANSIENT)
            attempts = retry_or_fail(runtime.factory, job, error_reason(exc), runtime.cfg.worker.max_retries,
                                     worker=runtime.name)
            if attempts is None:
                log.error("job #%d failed: %s", job, error_reason(exc), exc_info=unforeseen)
                return "failed"
            delay = retry_delay_s(attempts)  # the same due time retry_or_fail recorded on the row
            log.warning("job #%d: %s error (%s); retry %d in %d s", job, "unexpected" if unforeseen else "transient",
                        error_reason(exc), attempts, delay, exc_info=unforeseen)
            raise self.retry(countdown=delay, exc=exc) from exc
