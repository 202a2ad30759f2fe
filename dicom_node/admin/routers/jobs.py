"""Jobs: list with filters, one job, retry, cancel (state changes on Job rows, audited)."""
from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from sqlalchemy import select

from dicom_node.admin.auth import Principal, require_admin, require_read
from dicom_node.admin.context import ctx_of, log
from dicom_node.admin.params import Offset, RowId
from dicom_node.clock import utcnow
from dicom_node.index.models import Audit, Job, JobState, Series
from dicom_node.outbox.hold import quality_doc, release_held_job
from dicom_node.outbox.queue import job_delivery

router = APIRouter(tags=["jobs"])

# done_with_errors too: a retry re-attempts only its failed slices (derived ones are skipped).
# queued too: a job stuck behind a lost broker message is sent again (a surviving copy is harmless:
# the worker's claim is atomic).
RETRYABLE = (JobState.failed, JobState.cancelled, JobState.done_with_errors, JobState.queued)
CANCELLABLE = (JobState.queued, JobState.running)


def job_view(job: Job, series: Series, delivery: dict[str, int] | None = None) -> dict[str, Any]:
    """A job as the API shows it (no patient data); `delivery`: its outbox rows per state, so a
    "done" job whose instances still wait for a peer says so."""
    try:
        timings = json.loads(job.timings) if job.timings else {}
    except ValueError:
        timings = {}
    total = job.progress_total or 0
    return {
        "id": job.id,
        "state": job.state.value,
        "series_uid": series.series_uid,
        "modality": series.modality,
        "series_description": series.series_description,
        "rule": job.rule_name,
        "model": job.model,
        "checkpoint_sha256": job.checkpoint_sha256,
        "scale": job.scale,
        "priority": job.priority,
        "destinations": [d for d in job.destinations.split(",") if d],
        "progress": {"done": job.progress_done, "total": total,
                     "fraction": (job.progress_done / total) if total else None},
        "attempts": job.attempts,
        "error": job.error,
        "derived_series_uid": job.derived_series_uid,
        "created_at": job.created_at.isoformat() if job.created_at else None,
        "started_at": job.started_at.isoformat() if job.started_at else None,
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
        "timings": timings,
        "delivery": delivery or {"pending": 0, "failed": 0, "delivered": 0},
        "held": job.held,
        "quality": quality_summary(job),
    }


def quality_summary(job: Job) -> dict[str, Any] | None:
    """The noise guard's series figures (workers/noise_guard.py) without the per-slice list; None
    when the job was not measured (not CT, or not run yet)."""
    doc = quality_doc(job.quality)
    if not doc:
        return None
    return {"noise_ratio": job.noise_ratio, "edge_ratio": job.edge_ratio,
            **{k: v for k, v in doc.items() if k != "slices"}, "held": job.held}


@router.get("/jobs")
def list_jobs(
    request: Request,
    state: JobState | None = None,
    modality: str | None = None,
    limit: int = Query(100, ge=1, le=1000),
    offset: Offset = 0,
    _: Principal = Depends(require_read),
) -> list[dict[str, Any]]:
    """Jobs, newest first, optionally filtered by state and the source series' modality."""
    q = select(Job, Series).join(Series, Job.series_pk == Series.id)
    if state is not None:
        q = q.where(Job.state == state)
    if modality:
        q = q.where(Series.modality == modality.upper())
    q = q.order_by(Job.id.desc()).limit(limit).offset(offset)
    with ctx_of(request).sessions() as session:
        rows = session.execute(q).all()
        delivery = job_delivery(session, [job.id for job, _s in rows])
        return [job_view(job, series, delivery[job.id]) for job, series in rows]


def _load(session: Any, job_id: int) -> tuple[Job, Series]:
    row = session.execute(
        select(Job, Series).join(Series, Job.series_pk == Series.id).where(Job.id == job_id)
    ).first()
    if row is None:
        raise HTTPException(404, f"no job {job_id}")
    return row[0], row[1]


@router.get("/jobs/{job_id}")
def get_job(job_id: RowId, request: Request, _: Principal = Depends(require_read)) -> dict[str, Any]:
    """One job with progress and per-stage timings."""
    with ctx_of(request).sessions() as session:
        return job_view(*_load(session, job_id), job_delivery(session, [job_id])[job_id])


def _transition(request: Request, job_id: int, allowed: tuple[JobState, ...], new: JobState,
                who: Principal, action: str) -> dict[str, Any]:
    ctx = ctx_of(request)
    with ctx.sessions() as session, session.begin():
        job, series = _load(session, job_id)
        if job.state not in allowed:
            raise HTTPException(
                409, f"job {job_id} is {job.state.value}; {action} needs one of {[s.value for s in allowed]}"
            )
        before = job.state.value
        job.state = new
        if new is JobState.queued:
            # A queued job without a task id is what the pipeline's Dispatcher sends to the workers.
            job.error, job.task_id, job.heartbeat_at, job.finished_at = "", "", None, None
            job.task_due_at = None  # now, even if a retry countdown was pending
            job.attempts = 0  # a fresh worker.max_retries budget
        else:
            job.finished_at = utcnow()
        session.add(Audit(actor=who.actor, action=f"job.{action}", detail=f"job {job_id}: {before} -> {new.value}"))
        view = job_view(job, series)
    log.info("job %s %s by %s (%s -> %s)", job_id, action, who.actor, before, new.value)
    return view


@router.post("/jobs/{job_id}/retry")
def retry_job(job_id: RowId, request: Request, who: Principal = Depends(require_admin)) -> dict[str, Any]:
    """Set a failed, cancelled, done_with_errors or queued job to queued without a task; the dispatcher
    sends it to a worker (for a queued one: again, in case its broker message was lost).

    Slices already derived are kept (the worker resumes), so progress is not reset.
    """
    view = _transition(request, job_id, RETRYABLE, JobState.queued, who, "retry")
    enqueue = ctx_of(request).enqueue_job
    view["enqueued"] = False
    if enqueue is not None:
        enqueue(job_id)
        view["enqueued"] = True
    return view


@router.get("/jobs/{job_id}/quality")
def job_quality(job_id: RowId, request: Request, _: Principal = Depends(require_read)) -> dict[str, Any]:
    """The noise guard's companion report: series figures and every slice's noise and edge ratio
    against lanczos, by source SOP Instance UID ([noise, edge, flat-tissue pixels])."""
    with ctx_of(request).sessions() as session:
        job, _series = _load(session, job_id)
        doc = quality_doc(job.quality)
        return {"job": job.id, "summary": quality_summary(job), "slices": doc.get("slices", {})}


@router.post("/jobs/{job_id}/release")
def release_job(job_id: RowId, request: Request, who: Principal = Depends(require_admin)) -> dict[str, Any]:
    """Send a derived series the noise guard held for review (its outbox rows become pending)."""
    ctx = ctx_of(request)
    with ctx.sessions() as session, session.begin():
        job, series = _load(session, job_id)
        if not job.held:
            raise HTTPException(409, f"job {job_id} is not held for review")
        rows = release_held_job(session, job, who.actor)
        session.add(Audit(actor=who.actor, action="job.release",
                          detail=f"job {job_id}: held for review -> released, {rows} outbox row(s) to send"))
        view = job_view(job, series)
    log.info("job %s released for sending by %s (%d outbox rows)", job_id, who.actor, rows)
    view["released_rows"] = rows
    return view


@router.post("/jobs/{job_id}/cancel")
def cancel_job(job_id: RowId, request: Request, who: Principal = Depends(require_admin)) -> dict[str, Any]:
    """Mark a queued or running job cancelled (the worker checks the row before each step)."""
    return _transition(request, job_id, CANCELLABLE, JobState.cancelled, who, "cancel")
