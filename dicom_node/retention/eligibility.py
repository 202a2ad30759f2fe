"""Which series recycling may remove, oldest first by last activity.

A series is eligible when nothing still needs it: every job on it (and, for a derived series, the
job that made it) finished, every outbox row of its instances delivered (or failed for good with
retention.recycle_failed_deliveries), no reader-study case points at it, it is not protected, and
its last activity is older than retention.keep_after_delivery_h. A source series waits until no
series derived from it is left: the derived one is 16x bigger and can be made again from the source.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, exists, func, or_, select
from sqlalchemy.orm import Session, aliased

from config.schema import RetentionConfig
from dicom_node.index.models import (
    Instance,
    Job,
    JobState,
    Outbox,
    OutboxState,
    ReaderStudyCase,
    Series,
    SeriesState,
)

UNFINISHED_JOBS = (JobState.queued, JobState.running)


@dataclass(frozen=True)
class Candidate:
    """One eligible series with what recycling it frees."""

    pk: int
    series_uid: str
    modality: str
    kind: str  # "original" | "derived"
    instances: int
    bytes: int
    last_activity: datetime

    def age_h(self, now: datetime) -> float:
        return (now - self.last_activity).total_seconds() / 3600


def aware(value: datetime | None) -> datetime | None:
    """SQLite gives back naive datetimes (stored as UTC)."""
    return value if value is None or value.tzinfo else value.replace(tzinfo=UTC)


def blocking_outbox_states(rc: RetentionConfig) -> tuple[OutboxState, ...]:
    # A series held for review (noise guard) still waits for its delivery.
    waiting = (OutboxState.pending, OutboxState.held)
    return waiting if rc.recycle_failed_deliveries else (*waiting, OutboxState.failed)


def _not_needed(rc: RetentionConfig) -> list[Any]:
    """SQL conditions: nothing in the pipeline, the outbox or a reader study still needs the series."""
    derived = aliased(Series)
    in_series = Instance.series_pk == Series.id
    return [
        ~exists().where(Job.series_pk == Series.id, Job.state.in_(UNFINISHED_JOBS)),
        ~exists().where(Job.id == Series.derived_from_job, Job.state.in_(UNFINISHED_JOBS)),
        ~exists().where(Outbox.instance_pk == Instance.id, in_series, Outbox.state.in_(blocking_outbox_states(rc))),
        ~exists().where(ReaderStudyCase.instance_pk == Instance.id, in_series),
        ~exists().where(derived.derived_from_job == Job.id, Job.series_pk == Series.id),
        # Originals once routed (their jobs exist), derived series once the assembler saw them complete.
        or_(and_(Series.derived_from_job.is_(None), Series.state == SeriesState.routed),
            and_(Series.derived_from_job.is_not(None), Series.state != SeriesState.receiving)),
    ]


def eligible_series(session: Session, rc: RetentionConfig, now: datetime, series_pk: int | None = None,
                    limit: int | None = None) -> list[Candidate]:
    """Eligible series, oldest last activity first (`series_pk`: that one series only)."""
    sizes = (select(Instance.series_pk, func.count(Instance.id).label("n"), func.sum(Instance.file_size).label("bytes"))
             .group_by(Instance.series_pk).subquery())
    q = (select(Series.id, Series.series_uid, Series.modality, Series.derived_from_job, Series.last_received_at,
                sizes.c.n, sizes.c.bytes)
         .join(sizes, sizes.c.series_pk == Series.id)
         .where(Series.protected.is_(False), Series.recycling_at.is_(None), *_not_needed(rc)))
    if series_pk is not None:
        q = q.where(Series.id == series_pk)
    cutoff = now - timedelta(hours=rc.keep_after_delivery_h)
    found: list[Candidate] = []
    for pk, uid, modality, job, received, n, size in session.execute(q.order_by(Series.last_received_at, Series.id)):
        last = last_activity(session, pk, aware(received) or now)
        if last <= cutoff:
            found.append(Candidate(pk, uid, modality, "derived" if job is not None else "original", int(n),
                                   int(size or 0), last))
    found.sort(key=lambda c: (c.last_activity, c.pk))
    return found[:limit] if limit is not None else found


def last_activity(session: Session, series_pk: int, received: datetime) -> datetime:
    """The latest of: last instance received, a job on it finished, an instance of it delivered."""
    delivered = session.scalar(select(func.max(Outbox.delivered_at)).join(Instance, Outbox.instance_pk == Instance.id)
                               .where(Instance.series_pk == series_pk))
    finished = session.scalar(select(func.max(Job.finished_at)).where(Job.series_pk == series_pk))
    return max(t for t in (received, aware(delivered), aware(finished)) if t is not None)
