"""Outbox rows held for review (noise guard, workers/noise_guard.py) and their release.

A held row is an ordinary outbox row in state `held`: the sender only takes `pending` rows, so it
waits without any change to the sender; retention counts it as still to be delivered.
"""
from __future__ import annotations

import json
from typing import Any, cast

from sqlalchemy import update
from sqlalchemy.engine import CursorResult
from sqlalchemy.orm import Session

from dicom_node.clock import utcnow
from dicom_node.index.models import Job, Outbox, OutboxState


def quality_doc(text: str) -> dict[str, Any]:
    """job.quality as a dict (empty for a job the noise guard never measured)."""
    try:
        doc = json.loads(text) if text else {}
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


def hold_rows(session: Session, job_id: int) -> int:
    """The job's pending rows become held (in the caller's transaction); returns how many."""
    result = session.execute(update(Outbox).where(Outbox.job_pk == job_id, Outbox.state == OutboxState.pending)
                             .values(state=OutboxState.held))
    return int(cast("CursorResult[Any]", result).rowcount or 0)


def release_rows(session: Session, job_id: int) -> int:
    """The job's held rows become pending, due now; returns how many."""
    result = session.execute(update(Outbox).where(Outbox.job_pk == job_id, Outbox.state == OutboxState.held)
                             .values(state=OutboxState.pending, next_attempt_at=utcnow()))
    return int(cast("CursorResult[Any]", result).rowcount or 0)


def release_held_job(session: Session, job: Job, actor: str) -> int:
    """An admin's release of a job held for review: its rows are sent from now on, and job.quality
    records who released it (a later retry of the job then holds nothing). Returns rows released."""
    doc = quality_doc(job.quality)
    doc.update(released_by=actor, released_at=utcnow().isoformat())
    job.quality, job.held = json.dumps(doc), False
    return release_rows(session, job.id)
