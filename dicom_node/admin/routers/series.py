"""Series state: list with filters, one series with its jobs. A recycled series whose row stays
only as its jobs' parent (retention.keep_job_history) is left out unless `?recycled=true`."""
from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from sqlalchemy import func, select

from dicom_node.admin.auth import Principal, require_read
from dicom_node.admin.context import ctx_of
from dicom_node.admin.ohif import viewer_path
from dicom_node.admin.params import Offset
from dicom_node.admin.routers.jobs import job_view
from dicom_node.index.models import Instance, Job, Series, SeriesState
from dicom_node.outbox.queue import job_delivery

router = APIRouter(tags=["series"])


def series_view(series: Series, n_instances: int) -> dict[str, Any]:
    """A series as the API shows it (no patient data)."""
    return {
        "series_uid": series.series_uid,
        "modality": series.modality,
        "series_number": series.series_number,
        "series_description": series.series_description,
        "body_part": series.body_part,
        "calling_ae": series.calling_ae,
        "state": series.state.value,
        "instances": n_instances,
        "first_received_at": series.first_received_at.isoformat() if series.first_received_at else None,
        "last_received_at": series.last_received_at.isoformat() if series.last_received_at else None,
        "stable_at": series.stable_at.isoformat() if series.stable_at else None,
        "likely_incomplete": series.likely_incomplete,
        "incomplete_reason": series.incomplete_reason,
        "derived_from_job": series.derived_from_job,
        "protected": series.protected,
        "recycled_at": series.recycled_at.isoformat() if series.recycled_at else None,
    }


_COUNT = select(func.count(Instance.id)).where(Instance.series_pk == Series.id).scalar_subquery()


@router.get("/series")
def list_series(
    request: Request,
    state: SeriesState | None = None,
    modality: str | None = None,
    derived: bool | None = None,
    recycled: bool = False,
    limit: int = Query(100, ge=1, le=1000),
    offset: Offset = 0,
    _: Principal = Depends(require_read),
) -> list[dict[str, Any]]:
    """Series, most recently received first (history-only rows of recycled series with `recycled`)."""
    q = select(Series, _COUNT)
    if not recycled:
        q = q.where(Series.recycled_at.is_(None))
    if state is not None:
        q = q.where(Series.state == state)
    if modality:
        q = q.where(Series.modality == modality.upper())
    if derived is not None:
        q = q.where(Series.derived_from_job.is_not(None) if derived else Series.derived_from_job.is_(None))
    q = q.order_by(Series.last_received_at.desc(), Series.id.desc()).limit(limit).offset(offset)
    with ctx_of(request).sessions() as session:
        return [series_view(s, n) for s, n in session.execute(q).all()]


@router.get("/series/{series_uid}")
def get_series(series_uid: str, request: Request, recycled: bool = False,
               _: Principal = Depends(require_read)) -> dict[str, Any]:
    """One series with the jobs made from it (a recycled, history-only one with `recycled`)."""
    q = select(Series, _COUNT).where(Series.series_uid == series_uid)
    if not recycled:
        q = q.where(Series.recycled_at.is_(None))
    with ctx_of(request).sessions() as session:
        row = session.execute(q).first()
        if row is None:
            raise HTTPException(404, "no such series")
        series, n = row
        jobs = session.execute(select(Job).where(Job.series_pk == series.id).order_by(Job.id)).scalars().all()
        delivery = job_delivery(session, [j.id for j in jobs])
        study_uid = series.study.study_uid
        views = []
        for j in jobs:
            view = job_view(j, series, delivery[j.id])
            # OHIF opens the original beside the upscaled series (both over /dicomweb).
            if ctx_of(request).ohif_served and j.derived_series_uid and view["state"] in ("done", "done_with_errors"):
                view["ohif_url"] = viewer_path(study_uid, series.series_uid, j.derived_series_uid)
            views.append(view)
        return {**series_view(series, n), "study_uid": study_uid, "jobs": views}
