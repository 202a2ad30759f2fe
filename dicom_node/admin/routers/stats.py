"""Dashboard numbers: queue, throughput, failures."""
from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from fastapi import APIRouter, Depends, Request
from sqlalchemy import case, func, select

from dicom_node.admin.auth import Principal, require_read
from dicom_node.admin.context import ctx_of
from dicom_node.index.models import FINISHED_STATES, Instance, Job, JobState, Outbox, OutboxState, Series, utcnow
from dicom_node.metrics import IndexSnapshot

router = APIRouter(tags=["dashboard"])


def queue_depths(session: Any) -> dict[str, int]:
    """Items waiting per queue: queued jobs by priority, pending outbox items by destination."""
    depth = {f"jobs.{p}": 0 for p in ("stat", "routine")}
    for priority, n in session.execute(
        select(Job.priority, func.count()).where(Job.state == JobState.queued).group_by(Job.priority)
    ):
        depth[f"jobs.{priority}"] = n
    for dest, n in session.execute(
        select(Outbox.destination, func.count()).where(Outbox.state == OutboxState.pending).group_by(Outbox.destination)
    ):
        depth[f"outbox.{dest}"] = n
    return depth


def index_snapshot(session: Any) -> IndexSnapshot:
    """Queue depth, jobs per state, stage durations of finished jobs, failed send attempts."""
    snap = IndexSnapshot(queue_depth=queue_depths(session))
    for modality, n in session.execute(
        select(Series.modality, func.count(Instance.id)).join(Instance, Instance.series_pk == Series.id)
        .where(Series.derived_from_job.is_(None)).group_by(Series.modality)
    ):
        snap.instances_received[modality] = n
    snap.jobs_by_state = {s.value: 0 for s in JobState}
    for state, n in session.execute(select(Job.state, func.count()).group_by(Job.state)):
        snap.jobs_by_state[state.value] = n
    for (timings,) in session.execute(select(Job.timings).where(Job.state.in_(FINISHED_STATES), Job.timings != "")):
        try:
            stages = json.loads(timings)
        except ValueError:
            continue
        for stage, seconds in stages.items():
            if isinstance(seconds, (int, float)) and seconds >= 0:
                snap.stage_seconds.setdefault(stage, []).append(float(seconds))
    # Every attempt that did not deliver was a failure followed by a retry (or giving up).
    delivered = case((Outbox.state == OutboxState.delivered, 1), else_=0)
    for dest, failed in session.execute(
        select(Outbox.destination, func.sum(Outbox.attempts) - func.sum(delivered)).group_by(Outbox.destination)
    ):
        snap.send_retries[dest] = int(failed or 0)
    return snap


@router.get("/stats")
def stats(request: Request, _: Principal = Depends(require_read)) -> dict[str, Any]:
    """Queue depth, jobs per state, throughput over the last hour and day, recent failures."""
    now = utcnow()
    hour, day = now - timedelta(hours=1), now - timedelta(days=1)
    with ctx_of(request).sessions() as session:
        jobs = {s.value: 0 for s in JobState}
        for state, n in session.execute(select(Job.state, func.count()).group_by(Job.state)):
            jobs[state.value] = n
        outbox = {s.value: 0 for s in OutboxState}
        for state, n in session.execute(select(Outbox.state, func.count()).group_by(Outbox.state)):
            outbox[state.value] = n

        def count(q: Any) -> int:
            return int(session.execute(q).scalar() or 0)

        done = select(func.count()).select_from(Job).where(Job.state.in_(FINISHED_STATES))
        received = select(func.count()).select_from(Instance).join(Series).where(Series.derived_from_job.is_(None))
        failed = session.execute(
            select(Job.id, Job.model, Job.error, Job.finished_at)
            .where(Job.state.in_((JobState.failed, JobState.done_with_errors))).order_by(Job.id.desc()).limit(5)
        ).all()
        return {
            "queue": queue_depths(session),
            "jobs": jobs,
            "outbox": outbox,
            "throughput": {
                "jobs_done_1h": count(done.where(Job.finished_at >= hour)),
                "jobs_done_24h": count(done.where(Job.finished_at >= day)),
                "instances_received_1h": count(received.where(Instance.received_at >= hour)),
                "instances_received_24h": count(received.where(Instance.received_at >= day)),
            },
            "failures": {
                "jobs_failed": jobs[JobState.failed.value],
                "jobs_done_with_errors": jobs[JobState.done_with_errors.value],
                "outbox_failed": outbox[OutboxState.failed.value],
                "recent": [
                    {"job": i, "model": m, "error": e[:300], "at": f.isoformat() if f else None}
                    for i, m, e, f in failed
                ],
            },
        }
