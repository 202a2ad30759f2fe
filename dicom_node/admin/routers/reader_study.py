"""Reader study API: admins define, start, close and read results under /api/reader-studies;
readers (role `reader`) read and answer under /api/reading, which never names a model while the
study is open (opaque per-reader candidate ids, labels A, B, C...)."""
from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any, NoReturn

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import Response
from fastapi.security import HTTPAuthorizationCredentials
from pydantic import BaseModel, Field

from dicom_node.admin.auth import Principal, _bearer, _principal, require_admin, require_read, token_names
from dicom_node.admin.context import AdminContext, bad_key, ctx_of
from dicom_node.admin.params import RowId
from dicom_node.admin.render import window_png
from dicom_node.reader_study import export, reading, results, service
from dicom_node.reader_study.definition import WINDOWS, StudyDefinition
from dicom_node.reader_study.records import StudyError, reader_accounts

router = APIRouter(tags=["reader study"])
log = logging.getLogger("srnode.admin")


def require_reader(request: Request, creds: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> Principal:
    """Dependency: a token with the `reader` role (the reading screen's only role)."""
    who = _principal(request, creds)
    if who.role != "reader":
        log.warning("admin API: %s may not %s %s", who.actor, request.method, request.url.path)
        raise HTTPException(403, f"role {who.role!r} is not a reader")
    return who


def _fail(exc: StudyError) -> NoReturn:
    if exc.status == 422:
        raise bad_key(exc.key, str(exc).split(": ", 1)[1]) from None
    raise HTTPException(exc.status, str(exc)) from None


def _storage(request: Request) -> Path:
    return Path(ctx_of(request).live.base.node.storage_dir)


# --- admin side -------------------------------------------------------------------------------


@router.get("/reader-studies/readers")
def readers(request: Request, _: Principal = Depends(require_read)) -> list[dict[str, str]]:
    """Reader accounts a study can name: fingerprints of the tokens with role reader, and the
    display name an admin gave the token (admin.tokens: {role, name}), if any."""
    cfg = ctx_of(request).live.current()
    names = token_names(cfg)
    return [{"reader": fp, "name": names.get(fp, "")} for fp in reader_accounts(cfg)]


@router.get("/reader-studies/series/{series_uid}/slices")
def slices(series_uid: str, request: Request, _: Principal = Depends(require_read)) -> list[dict[str, Any]]:
    """Slices of a stored series in geometric order, to pick a study's cases from."""
    return service.series_slices(ctx_of(request).sessions, series_uid)


@router.get("/reader-studies")
def list_studies(request: Request, _: Principal = Depends(require_read)) -> list[dict[str, Any]]:
    """Every study with state, candidate progress and answers per reader."""
    return service.study_summary(ctx_of(request).sessions)


@router.post("/reader-studies", status_code=201)
def create(definition: StudyDefinition, request: Request, who: Principal = Depends(require_admin)) -> dict[str, Any]:
    """Create a study and start computing its candidates in the background (poll its state)."""
    ctx = ctx_of(request)
    cfg = ctx.live.current()
    try:
        study_id = service.create_study(ctx.sessions, cfg, definition, who.actor)
    except StudyError as exc:
        _fail(exc)
    _start(ctx, cfg, study_id)
    return service.study_summary(ctx.sessions, study_id)[0]


def _start(ctx: AdminContext, cfg: Any, study_id: int) -> None:
    # One computing thread per study in this process (a second would write the same candidates).
    running = ctx.candidate_threads
    if (t := running.get(study_id)) is not None and t.is_alive():
        raise HTTPException(409, f"study {study_id} is already computing its candidates")
    try:
        service.mark_computing(ctx.sessions, study_id)
    except StudyError as exc:
        _fail(exc)
    t = threading.Thread(target=service.compute_candidates, args=(ctx.sessions, cfg, study_id),
                         name=f"reader-study-{study_id}", daemon=True)
    running[study_id] = t
    t.start()


@router.post("/reader-studies/{study_id}/start")
def restart(study_id: RowId, request: Request, _: Principal = Depends(require_admin)) -> dict[str, Any]:
    """Compute missing candidates again (after a failure, or a node restart while computing)."""
    ctx = ctx_of(request)
    _start(ctx, ctx.live.current(), study_id)
    return service.study_summary(ctx.sessions, study_id)[0]


@router.get("/reader-studies/{study_id}")
def get_study(study_id: RowId, request: Request, _: Principal = Depends(require_read)) -> dict[str, Any]:
    """One study (admin view: includes the definition, hence the model names)."""
    try:
        return service.study_summary(ctx_of(request).sessions, study_id)[0]
    except StudyError as exc:
        _fail(exc)


@router.post("/reader-studies/{study_id}/close")
def close(study_id: RowId, request: Request, who: Principal = Depends(require_admin)) -> dict[str, Any]:
    """Close the study: answers stop, model identities become visible to its readers."""
    ctx = ctx_of(request)
    try:
        service.close_study(ctx.sessions, study_id, who.actor)
        return service.study_summary(ctx.sessions, study_id)[0]
    except StudyError as exc:
        _fail(exc)


def _results(request: Request, study_id: int) -> dict[str, Any]:
    try:
        return results.results(ctx_of(request).sessions, study_id)
    except StudyError as exc:
        _fail(exc)


@router.get("/reader-studies/{study_id}/results")
def study_results(study_id: RowId, request: Request, _: Principal = Depends(require_read)) -> dict[str, Any]:
    """Mean rank (or win rate) per model and scale, 95% bootstrap CIs, Kendall's W, PSNR/SSIM."""
    return _results(request, study_id)


@router.get("/reader-studies/{study_id}/results.csv", response_class=Response)
def results_csv(study_id: RowId, request: Request, _: Principal = Depends(require_read)) -> Response:
    """The Table 5 style table as CSV."""
    return Response(export.results_csv(_results(request, study_id)), media_type="text/csv",
                    headers={"Content-Disposition": f'attachment; filename="reader-study-{study_id}.csv"'})


@router.get("/reader-studies/{study_id}/results.png", response_class=Response)
def results_png(study_id: RowId, request: Request, _: Principal = Depends(require_read)) -> Response:
    """Chart of the mean ranks with their CIs."""
    return Response(export.results_png(_results(request, study_id)), media_type="image/png")


@router.get("/reader-studies/{study_id}/answers.csv", response_class=Response)
def answers_csv(study_id: RowId, request: Request, _: Principal = Depends(require_read)) -> Response:
    """Every submission (reader, time, display order, ranking): the audit trail of the study."""
    try:
        rows = results.answer_rows(ctx_of(request).sessions, study_id)
    except StudyError as exc:
        _fail(exc)
    return Response(export.answers_csv(rows), media_type="text/csv",
                    headers={"Content-Disposition": f'attachment; filename="reader-study-{study_id}-answers.csv"'})


# --- reader side (blinded) ----------------------------------------------------------------------


class Answer(BaseModel):
    ranking: list[str] = Field(min_length=2, description="opaque candidate ids, best first")
    seconds_on_case: float | None = Field(None, ge=0)


@router.get("/reading/studies")
def my_studies(request: Request, who: Principal = Depends(require_reader)) -> list[dict[str, Any]]:
    """The studies this reader takes part in, with k answered of n."""
    return reading.reader_studies(ctx_of(request).sessions, who.fingerprint)


@router.get("/reading/{study_id}/cases/{position}")
def case(study_id: RowId, position: RowId, request: Request,
         who: Principal = Depends(require_reader)) -> dict[str, Any]:
    """Case `position` of this reader's sequence: candidates as opaque ids labelled A, B, C..."""
    try:
        return reading.reader_case(ctx_of(request).sessions, study_id, who.fingerprint, position)
    except StudyError as exc:
        _fail(exc)


@router.post("/reading/{study_id}/cases/{position}/answer")
def answer(study_id: RowId, position: RowId, body: Answer, request: Request,
           who: Principal = Depends(require_reader)) -> dict[str, Any]:
    """Store this reader's ranking of the case (kept with time and display order)."""
    try:
        return reading.submit_answer(ctx_of(request).sessions, study_id, who.fingerprint, position,
                                     body.ranking, body.seconds_on_case)
    except StudyError as exc:
        _fail(exc)


@router.get("/reading/{study_id}/images/{oid}.png", response_class=Response)
def image(study_id: RowId, oid: str, request: Request,
          center: float | None = Query(None, description="window centre (HU for CT)"),
          width: float | None = Query(None, gt=0, description="window width"),
          preset: str | None = Query(None, description="lung | mediastinum | bone | brain"),
          who: Principal = Depends(require_reader)) -> Response:
    """A candidate (or the reference) rendered from its float values through the window, for display."""
    try:
        values = reading.reader_image(ctx_of(request).sessions, _storage(request), study_id, who.fingerprint, oid)
    except StudyError as exc:
        _fail(exc)
    if center is None or width is None:
        if preset is not None and preset not in WINDOWS:
            raise bad_key("preset", f"one of {', '.join(WINDOWS)}")
        center, width = WINDOWS[preset or "mediastinum"]
    return Response(window_png(values, center, width), media_type="image/png",
                    headers={"Cache-Control": "private, max-age=300"})
