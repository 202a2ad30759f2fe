"""Dashboard numbers: queue, throughput, failures, disk; history of throughput and queue depth."""
from __future__ import annotations

import json
import shutil
from bisect import bisect_right
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

from fastapi import APIRouter, Depends, Query, Request
from sqlalchemy import case, func, select

from dicom_node.admin.auth import Principal, require_read
from dicom_node.admin.context import ctx_of
from dicom_node.clock import utcnow
from dicom_node.index.models import FINISHED_STATES, Instance, Job, JobState, Outbox, OutboxState, Series
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
        for outbox_state, n in session.execute(select(Outbox.state, func.count()).group_by(Outbox.state)):
            outbox[outbox_state.value] = n

        def count(q: Any) -> int:
            return int(session.execute(q).scalar() or 0)

        done = select(func.count()).select_from(Job).where(Job.state.in_(FINISHED_STATES))
        received = select(func.count()).select_from(Instance).join(Series).where(Series.derived_from_job.is_(None))
        disk = disk_usage(Path(ctx_of(request).live.base.node.storage_dir))
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
            "disk": disk,
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


def disk_usage(storage_dir: Path) -> dict[str, int] | None:
    """Used, free and total bytes of the file system holding storage_dir (None if it is missing)."""
    try:
        usage = shutil.disk_usage(storage_dir)
    except OSError:
        return None
    return {"used_bytes": usage.used, "free_bytes": usage.free, "total_bytes": usage.total}


def _aware(value: datetime) -> datetime:
    # SQLite returns naive datetimes; every time in the index is UTC.
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _per_bucket(times: list[datetime], start: datetime, bucket_s: int, n: int) -> list[int]:
    counts = [0] * n
    for t in times:
        k = int((_aware(t) - start).total_seconds() // bucket_s)
        if 0 <= k < n:
            counts[k] += 1
    return counts


def _open_at(spans: list[tuple[datetime, datetime | None]], ends: list[datetime]) -> list[int]:
    """How many (opened, closed) spans were open at each instant of `ends`: started ≤ t < closed."""
    opened = sorted(_aware(a) for a, _b in spans)
    closed = sorted(_aware(b) for _a, b in spans if b is not None)
    return [bisect_right(opened, t) - bisect_right(closed, t) for t in ends]


def bucket_seconds(hours: int) -> int:
    """10-minute buckets up to 12 h, hourly beyond (at most 48 points per chart)."""
    return 600 if hours <= 12 else 3600


@router.get("/stats/history")
def stats_history(
    request: Request,
    hours: int = Query(6, ge=1, le=48, description="how far back"),
    _: Principal = Depends(require_read),
) -> dict[str, Any]:
    """Per time bucket: jobs finished, source instances received, instances delivered (counts in the
    bucket), and queue depth at the bucket's end (jobs not finished, outbox rows not delivered)."""
    now = utcnow()
    step = bucket_seconds(hours)
    n = hours * 3600 // step
    start = now - timedelta(seconds=n * step)
    ends = [start + timedelta(seconds=(k + 1) * step) for k in range(n)]
    with ctx_of(request).sessions() as session:
        done = cast(list[datetime], list(session.scalars(select(Job.finished_at).where(Job.finished_at >= start))))
        # `>= start` leaves out NULL times.
        received = cast(list[datetime], list(session.scalars(
            select(Instance.received_at).join(Series)
            .where(Series.derived_from_job.is_(None), Instance.received_at >= start))))
        delivered = cast(list[datetime], list(session.scalars(
            select(Outbox.delivered_at).where(Outbox.delivered_at >= start))))
        jobs_open = session.execute(select(Job.created_at, Job.finished_at).where(
            (Job.finished_at.is_(None)) | (Job.finished_at >= start))).all()
        # Rows that gave up (state failed) record no time; they count as waiting until now.
        outbox_open = session.execute(select(Outbox.created_at, Outbox.delivered_at).where(
            (Outbox.delivered_at.is_(None)) | (Outbox.delivered_at >= start))).all()
    return {
        "hours": hours,
        "bucket_s": step,
        "start": start.isoformat(),
        "buckets": [t.isoformat() for t in ends],
        "jobs_done": _per_bucket(done, start, step, n),
        "instances_received": _per_bucket(received, start, step, n),
        "instances_delivered": _per_bucket(delivered, start, step, n),
        "jobs_waiting": _open_at(list(jobs_open), ends),
        "outbox_pending": _open_at(list(outbox_open), ends),
    }
