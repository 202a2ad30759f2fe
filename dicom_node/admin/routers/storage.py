"""Storage: usage, quota and what recycling may take (GET /api/storage); protect/unprotect a series."""
from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request
from sqlalchemy import select

from dicom_node.admin.auth import Principal, require_admin, require_read
from dicom_node.admin.context import ctx_of
from dicom_node.clock import utcnow
from dicom_node.index.models import Audit, Series
from dicom_node.retention.eligibility import eligible_series
from dicom_node.retention.usage import storage_status

router = APIRouter(tags=["storage"])


@router.get("/storage")
def get_storage(request: Request, _: Principal = Depends(require_read)) -> dict[str, Any]:
    """Used bytes (by kind), quota, eligible and protected series, bytes recycled, and why the
    node refuses instances (`refusing`, empty when it does not)."""
    ctx = ctx_of(request)
    with ctx.sessions() as session:
        return storage_status(session, ctx.live.base.retention)


@router.get("/storage/series/{series_uid}")
def series_retention(series_uid: str, request: Request, _: Principal = Depends(require_read)) -> dict[str, Any]:
    """One series' retention state: protected, eligible for recycling now."""
    ctx = ctx_of(request)
    with ctx.sessions() as session:
        series = session.scalar(select(Series).where(Series.series_uid == series_uid))
        if series is None:
            raise HTTPException(404, "no such series")
        eligible = bool(eligible_series(session, ctx.live.base.retention, utcnow(), series_pk=series.id))
        return {"series_uid": series_uid, "protected": series.protected, "eligible": eligible}


def _set_protected(series_uid: str, request: Request, who: Principal, protected: bool) -> dict[str, Any]:
    with ctx_of(request).sessions.begin() as session:
        series = session.scalar(select(Series).where(Series.series_uid == series_uid))
        if series is None:
            raise HTTPException(404, "no such series")
        if series.recycling_at is not None:
            raise HTTPException(409, "the series is being recycled")
        before, series.protected = series.protected, protected
        session.add(Audit(actor=who.actor, action="series.protect" if protected else "series.unprotect",
                          detail=f"series {series_uid}: protected {before} -> {protected}"))
        return {"series_uid": series_uid, "protected": protected}


@router.post("/series/{series_uid}/protect")
def protect(series_uid: str, request: Request, who: Principal = Depends(require_admin)) -> dict[str, Any]:
    """Keep the series from recycling (audited)."""
    return _set_protected(series_uid, request, who, True)


@router.post("/series/{series_uid}/unprotect")
def unprotect(series_uid: str, request: Request, who: Principal = Depends(require_admin)) -> dict[str, Any]:
    """Let recycling take the series again once eligible (audited)."""
    return _set_protected(series_uid, request, who, False)
