"""Audit log: who changed what, when, and what it was before.

A change is stored as `{"before": …, "after": …, "how": …}` holding only the parts that changed
(`audit_change`); the list shows that diff. Rows written before that (a config section's whole new
value) are shown as a diff against the section's previous row, or the file's value for the first.
"""
from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from sqlalchemy import select
from sqlalchemy.orm import Session

from dicom_node.admin.auth import Principal, require_read
from dicom_node.admin.context import ctx_of
from dicom_node.index.audit import changed_parts
from dicom_node.index.models import Audit

router = APIRouter(tags=["audit"])

CONFIG_SET = "config.set."
_MISSING = object()


def _as_change(detail: str) -> dict[str, Any] | None:
    try:
        value = json.loads(detail)
    except ValueError:
        return None
    if isinstance(value, dict) and {"before", "after", "how"} <= value.keys():
        return value
    return None


def _whole_value(detail: str) -> Any:
    try:
        value = json.loads(detail)
    except ValueError:
        return _MISSING  # cut off at 4000 characters, or not JSON
    return _MISSING if _as_change(detail) is not None else value


def _legacy_change(session: Session, row: Audit, file_cfg: dict[str, Any]) -> dict[str, Any] | None:
    # A config.set row holding the section's whole new value: diff it against the row before it.
    after = _whole_value(row.detail)
    if after is _MISSING:
        return None
    previous = session.execute(select(Audit.detail).where(Audit.action == row.action, Audit.id < row.id)
                               .order_by(Audit.id.desc()).limit(1)).scalar()
    section = row.action[len(CONFIG_SET):]
    before = _whole_value(previous) if previous is not None else file_cfg.get(section, _MISSING)
    if before is _MISSING:
        return None
    b, a = changed_parts(before, after)
    return {"before": b, "after": a, "how": "section"}


@router.get("/audit")
def list_audit(
    request: Request,
    action: str | None = Query(None, description="prefix, e.g. config.set or job."),
    limit: int = Query(100, ge=1, le=1000),
    _: Principal = Depends(require_read),
) -> list[dict[str, Any]]:
    """Audit entries, newest first; `change` is {before, after, how} where the row is a change."""
    ctx = ctx_of(request)
    q = select(Audit)
    if action:
        q = q.where(Audit.action.startswith(action))
    q = q.order_by(Audit.id.desc()).limit(limit)
    file_cfg = ctx.live.base.model_dump(mode="json")
    with ctx.sessions() as session:
        out = []
        for a in session.execute(q).scalars().all():
            change = _as_change(a.detail)
            if change is None and a.action.startswith(CONFIG_SET):
                change = _legacy_change(session, a, file_cfg)
            out.append({"id": a.id, "at": a.at.isoformat() if a.at else None, "actor": a.actor, "action": a.action,
                        "detail": a.detail, "change": change})
        return out


@router.get("/whoami", tags=["auth"])
def whoami(who: Principal = Depends(require_read)) -> dict[str, str]:
    """The role and name of the presented token (the console hides buttons the role may not use)."""
    return {"role": who.role, "actor": who.actor, "name": who.name}
