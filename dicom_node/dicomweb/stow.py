"""STOW-RS (PS3.18 10.5): POST /studies[/{study}] with multipart/related; type="application/dicom".

Each part goes through the C-STORE handler's receive policy (`handlers.store.store_received`:
free disk and quota checks, validation, atomic fsynced file, index row committed) before the
response is sent, so a 200 means what a C-STORE Success means. A refused part is listed in the
FailedSOPSequence with the C-STORE failure status as its FailureReason, and logged in one line;
the other parts land. Instances are recorded as sent by `routing.DICOMWEB_SENDER`, which routing
rules match with `source: dicomweb`; assembly and routing are then the C-STORE ones.

The body is read as it arrives, one part in memory at a time, and up to STORE_AHEAD parts are
being stored at once (their index rows share group commits, as parallel associations do).
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from pydicom.dataset import Dataset

from dicom_node.dicomweb.context import (
    Actor,
    DicomwebContext,
    Refused,
    Storer,
    ctx_of,
    service_root,
)
from dicom_node.dicomweb.json_model import DICOM_JSON, dataset_json, dumps
from dicom_node.handlers.association import free_disk_mb, quota_refusal
from dicom_node.handlers.store import OUT_OF_RESOURCES, store_received
from dicom_node.ingest import RejectedInstance, decode_header
from dicom_node.multipart import (
    MediaType,
    MultipartError,
    MultipartReader,
    Part,
)
from dicom_node.routing import DICOMWEB_SENDER
from dicom_node.storage import is_valid_uid, uid_for_log

log = logging.getLogger("srnode.dicomweb")
router = APIRouter()

DICOM = "application/dicom"
CANNOT_UNDERSTAND = 0xC000
STORE_AHEAD = 4


class StudyMismatch(RejectedInstance):
    """POST /studies/{study}: a part of another study (PS3.18 10.5.3: not stored)."""

    status = 0xA900


class NotDicom(RejectedInstance):
    """A part whose Content-Type is not application/dicom."""

    status = CANNOT_UNDERSTAND


@dataclass(frozen=True)
class Outcome:
    """What became of one part, for the response dataset."""

    status: int
    sop_class_uid: str = ""
    sop_instance_uid: str = ""
    study_uid: str = ""
    series_uid: str = ""


def _uid(ds: Dataset | None, keyword: str) -> str:
    value = ds.get(keyword) if ds is not None else None
    text = value.rstrip("\x00 ") if isinstance(value, str) else ""
    return text if is_valid_uid(text) else ""  # anything else may be swallowed patient data


def store_part(ctx: DicomwebContext, part: Part, study: str | None, who: str) -> Outcome:
    """Store one part with C-STORE's policy; its outcome (status 0 = stored).

    A stored part is answered with the UIDs ingest validated; the part is decoded here only when
    that is needed first (POST /studies/{study}: its study is checked before it is stored) or
    after a refusal (to name it in the log line and the FailedSOPSequence).
    """
    data = part.body
    decoded: list[Dataset | None] = []  # at most one decode, kept

    def header() -> Dataset | None:
        if not decoded:
            try:
                decoded.append(decode_header(data))
            except Exception:  # noqa: BLE001 - undecodable: store_received refuses it with its reason
                decoded.append(None)
        return decoded[0]

    def load() -> bytes:
        media = part.content_type.type
        if media and media != DICOM:
            raise NotDicom(f"part of type {media}, not {DICOM}")
        if study is not None:
            head = header()
            if head is not None and _uid(head, "StudyInstanceUID") != study:
                raise StudyMismatch("StudyInstanceUID differs from the one in the request's path")
        return data

    def shown() -> str:
        sop = _uid(header(), "SOPInstanceUID")
        return uid_for_log(sop) if sop else "(no readable SOP Instance UID)"

    status, result = store_received(ctx.receive, load, DICOMWEB_SENDER, who, shown)
    if result is not None:
        return Outcome(status, result.sop_class_uid, result.sop_instance_uid, result.study_uid, result.series_uid)
    head = header()
    return Outcome(status, _uid(head, "SOPClassUID"), _uid(head, "SOPInstanceUID"), _uid(head, "StudyInstanceUID"),
                   _uid(head, "SeriesInstanceUID"))


def response_dataset(outcomes: list[Outcome], root: str, study: str | None) -> Dataset:
    """The STOW-RS response (PS3.18 Table 10.5.3-2): RetrieveURL, ReferencedSOPSequence, FailedSOPSequence."""
    ds = Dataset()
    if study is not None:
        ds.RetrieveURL = f"{root}/studies/{study}"
    stored, failed = [], []
    for o in outcomes:
        item = Dataset()
        item.ReferencedSOPClassUID = o.sop_class_uid or None
        item.ReferencedSOPInstanceUID = o.sop_instance_uid or None
        if o.status == 0:
            item.RetrieveURL = f"{root}/studies/{o.study_uid}/series/{o.series_uid}/instances/{o.sop_instance_uid}"
            stored.append(item)
        else:
            item.FailureReason = o.status
            failed.append(item)
    if stored:
        ds.ReferencedSOPSequence = stored
    if failed:
        ds.FailedSOPSequence = failed
    return ds


def _http_status(outcomes: list[Outcome]) -> int:
    failed = [o for o in outcomes if o.status != 0]
    if not failed:
        return 200
    if len(failed) < len(outcomes):
        return 202  # stored some, failures for others
    return 503 if all(o.status == OUT_OF_RESOURCES for o in failed) else 409


def _check_request(ctx: DicomwebContext, request: Request) -> tuple[str, int]:
    """The boundary and the body size limit; Refused for a request no part of which can land."""
    media = MediaType.parse(request.headers.get("content-type", ""))
    if media.type != "multipart/related":
        raise Refused(415, 'STOW-RS takes multipart/related; type="application/dicom"')
    if media.params.get("type", DICOM).lower() != DICOM:
        raise Refused(415, f"parts of type {media.params['type']} are not taken; send {DICOM}")
    boundary = media.params.get("boundary", "")
    if not boundary:
        raise Refused(400, "the Content-Type has no boundary parameter")
    limit = int(ctx.cfg.dicomweb.max_stow_mb * 1024 * 1024)
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise Refused(413, f"the body is larger than dicomweb.max_stow_mb ({ctx.cfg.dicomweb.max_stow_mb:g} MiB)")
    if free_disk_mb(ctx.receive) < ctx.cfg.node.min_free_disk_mb:
        raise Refused(503, "storage below node.min_free_disk_mb", {"Retry-After": "60"})
    full = quota_refusal(ctx.receive)
    if full:
        raise Refused(503, full, {"Retry-After": "60"})
    return boundary, limit


async def stow(request: Request, who: Actor, study: str | None) -> Response:
    """Read the body part by part, store each as it completes, answer once all are stored."""
    started = time.monotonic()
    ctx = ctx_of(request)
    boundary, limit = _check_request(ctx, request)
    try:
        reader = MultipartReader(boundary, max_part_bytes=limit)
    except MultipartError as exc:
        raise Refused(400, str(exc)) from None
    actor = f"DICOMweb {who.actor}"
    running: list[asyncio.Task[Outcome]] = []
    outcomes: list[Outcome] = []
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > limit:
                raise Refused(413, f"the body is larger than dicomweb.max_stow_mb "
                                   f"({ctx.cfg.dicomweb.max_stow_mb:g} MiB); the parts before the limit were stored")
            for part in reader.feed(chunk):
                running.append(asyncio.create_task(run_in_threadpool(store_part, ctx, part, study, actor)))
                while len(running) >= STORE_AHEAD:
                    outcomes.append(await running.pop(0))
        reader.finish()
    except MultipartError as exc:
        if not running and not outcomes:
            raise Refused(400, f"malformed multipart body: {exc}") from None
        log.warning("STOW-RS by %s: body ended badly (%s); the complete parts are answered", who.actor, exc)
    finally:
        outcomes.extend([await task for task in running])  # every started store is answered
    if not outcomes:
        raise Refused(400, "the body has no parts")
    status = _http_status(outcomes)
    body = dataset_json(response_dataset(outcomes, service_root(request), study))
    failed = sum(o.status != 0 for o in outcomes)
    log.info("STOW-RS by %s: %d instance(s) stored, %d refused, %d bytes, %.2f s", who.actor,
             len(outcomes) - failed, failed, received, time.monotonic() - started)
    return Response(dumps(body), status_code=status, media_type=DICOM_JSON)


@router.post("/studies")
async def store_instances(request: Request, who: Storer) -> Response:
    """STOW-RS: store instances of any study."""
    return await stow(request, who, None)


@router.post("/studies/{study}")
async def store_study_instances(study: str, request: Request, who: Storer) -> Response:
    """STOW-RS: store instances of one study (parts of another study are refused, 0xA900)."""
    return await stow(request, who, study)
