"""Workers: every `srnode worker` (the embedded one too) as its health thread last reported it."""
from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from sqlalchemy import select

from dicom_node.admin.auth import Principal, require_read
from dicom_node.admin.context import ctx_of
from dicom_node.clock import utcnow
from dicom_node.index.models import Worker, WorkerState

router = APIRouter(tags=["workers"])


def worker_view(worker: Worker, now: Any) -> dict[str, Any]:
    """A worker as the API shows it; `state` is `gone` for an ok/refusing row not seen lately
    (killed, host lost): the row cannot say so itself."""
    alive = worker.alive(now)
    state = worker.state.value if alive or worker.state == WorkerState.stopped else "gone"
    seen = worker.last_seen_at if worker.last_seen_at.tzinfo else worker.last_seen_at.replace(tzinfo=now.tzinfo)
    return {
        "name": worker.name, "host": worker.host, "pid": worker.pid, "device": worker.device,
        "models": worker.model_list(), "state": state, "problem": worker.problem,
        "started_at": worker.started_at.isoformat() if worker.started_at else None,
        "last_seen_at": worker.last_seen_at.isoformat(), "seen_s_ago": round((now - seen).total_seconds(), 1),
    }


@router.get("/workers")
def list_workers(request: Request, _: Principal = Depends(require_read)) -> list[dict[str, Any]]:
    """Workers seen in the last day, most recently seen first: state ok | refusing (with the
    problem) | stopped | gone."""
    now = utcnow()
    with ctx_of(request).sessions() as session:
        return [worker_view(w, now) for w in session.scalars(select(Worker).order_by(Worker.last_seen_at.desc()))]
