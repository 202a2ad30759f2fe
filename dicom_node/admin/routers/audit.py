"""Audit log: who changed what, when."""
from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from sqlalchemy import select

from dicom_node.admin.auth import Principal, require_read
from dicom_node.admin.context import ctx_of
from dicom_node.index.models import Audit

router = APIRouter(tags=["audit"])


@router.get("/audit")
def list_audit(
    request: Request,
    action: str | None = Query(None, description="prefix, e.g. config.set or job."),
    limit: int = Query(100, ge=1, le=1000),
    _: Principal = Depends(require_read),
) -> list[dict[str, Any]]:
    """Audit entries, newest first."""
    q = select(Audit)
    if action:
        q = q.where(Audit.action.startswith(action))
    q = q.order_by(Audit.id.desc()).limit(limit)
    with ctx_of(request).sessions() as session:
        return [
            {"id": a.id, "at": a.at.isoformat() if a.at else None, "actor": a.actor, "action": a.action,
             "detail": a.detail}
            for a in session.execute(q).scalars()
        ]


@router.get("/whoami", tags=["auth"])
def whoami(who: Principal = Depends(require_read)) -> dict[str, str]:
    """The role of the presented token (the console hides buttons the role may not use)."""
    return {"role": who.role, "actor": who.actor}
