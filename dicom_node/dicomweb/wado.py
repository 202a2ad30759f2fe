"""WADO-RS (PS3.18 10.4): studies, series and instances (multipart application/dicom), metadata,
frames, bulk data and rendered images.

What a request names is planned by `dicom_node.qr.retrieve.plan_retrieve`, C-MOVE's planner: a
series that the index does not hold but an `on_demand` rule would make is a virtual series, and
retrieving it (instances or metadata) starts its job and streams its instances as they are
derived, as a C-MOVE of it does. Responses are streamed; the files are read one at a time.
"""
from __future__ import annotations

import io
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from pydicom import dcmread
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.filewriter import dcmwrite
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from sqlalchemy.exc import SQLAlchemyError

from dicom_node.dicomweb import render
from dicom_node.dicomweb.context import (
    DicomwebContext,
    Reader,
    Refused,
    bad_query,
    build_query,
    ctx_of,
    service_root,
)
from dicom_node.dicomweb.json_model import DICOM_JSON, dataset_json, json_array
from dicom_node.multipart import (
    MediaType,
    accept_list,
    new_boundary,
    related_type,
    write_parts,
)
from dicom_node.qr.attributes import Level
from dicom_node.qr.matching import QueryError
from dicom_node.qr.on_demand import OnDemandError
from dicom_node.qr.retrieve import RetrievePlan, plan_retrieve, produced_file

log = logging.getLogger("srnode.dicomweb")
router = APIRouter()

DICOM = "application/dicom"
OCTETS = "application/octet-stream"
ANY = "*"
# Compressed frames as sent when the client takes them as stored (PS3.18 Table 8.7.3-2).
FRAME_MEDIA = {
    "1.2.840.10008.1.2.4.50": "image/jpeg", "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg", "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls", "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2", "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.5": "image/dicom-rle",
}


@dataclass(frozen=True)
class Item:
    """One instance to answer with: its file, how it is stored, and where it is retrieved."""

    path: Path
    sop_instance_uid: str
    transfer_syntax_uid: str


# --- what a request names -----------------------------------------------------------------------
def plan(ctx: DicomwebContext, study: str, series: str | None = None, sop: str | None = None) -> RetrievePlan:
    """The stored instances (and on-demand series) a WADO-RS path names; 404 if none."""
    level = Level.IMAGE if sop else Level.SERIES if series else Level.STUDY
    values = {"StudyInstanceUID": study, "SeriesInstanceUID": series, "SOPInstanceUID": sop}
    try:
        query = build_query(level, {k: v for k, v in values.items() if v})
        with ctx.sessions() as session:
            found = plan_retrieve(session, query, ctx.storage_dir, ctx.on_demand)
    except QueryError as exc:
        raise bad_query(exc) from None
    except SQLAlchemyError as exc:
        raise Refused(503, f"index query failed ({type(exc).__name__})") from None
    if not found.stored and not found.virtual:
        raise Refused(404, f"no such {level.name.lower().replace('image', 'instance')}")
    return found


def items(ctx: DicomwebContext, found: RetrievePlan) -> Iterator[Item]:
    """Stored instances, then those of each on-demand series as its job derives them."""
    for stored in found.stored:
        yield Item(stored.path, stored.sop_instance_uid, stored.transfer_syntax_uid)
    for virtual in found.virtual:
        try:
            for produced in ctx.on_demand.materialise(virtual.series_uid):
                made = produced_file(produced)
                yield Item(made.path, made.sop_instance_uid, made.transfer_syntax_uid)
        except OnDemandError as exc:
            # The status line is sent already: the response ends short, and says so in the log.
            log.warning("WADO-RS: on-demand series %s failed: %s", virtual.series_uid, exc)
            return


def _single(found: RetrievePlan) -> Item:
    if not found.stored:  # an instance of an on-demand series not derived yet
        raise Refused(404, "no such instance (yet): retrieve its series to derive it")
    stored = found.stored[0]
    return Item(stored.path, stored.sop_instance_uid, stored.transfer_syntax_uid)


# --- transfer syntax negotiation ----------------------------------------------------------------
def wanted_syntax(request: Request, part_type: str) -> str:
    """The transfer syntax the Accept header asks for parts of `part_type`: a UID, or ANY (as stored).

    PS3.18 8.7.3.5.2: without a transfer-syntax parameter, Explicit VR Little Endian.
    """
    ranges = accept_list(request.headers.get("accept")) or [MediaType("multipart/related", {"type": part_type})]
    for media in ranges:
        if media.type in ("*/*", "multipart/*"):
            return ExplicitVRLittleEndian
        if media.type == "multipart/related" and media.params.get("type", part_type) in (part_type, "*/*"):
            return media.params.get("transfer-syntax", ExplicitVRLittleEndian)
        if media.type == part_type:
            return media.params.get("transfer-syntax", ExplicitVRLittleEndian)
    raise Refused(406, f'not acceptable: this resource is multipart/related; type="{part_type}"')


def encoded(item: Item, wanted: str) -> tuple[bytes, str]:
    """The instance's Part 10 bytes in `wanted` (ANY: as stored), and the syntax they are in.

    Decompression and the little-endian syntaxes are offered; anything else (or a codec that is
    missing) sends the instance as stored, its part naming the real syntax, and logs it once.
    """
    data = item.path.read_bytes()
    stored = item.transfer_syntax_uid or ExplicitVRLittleEndian
    if wanted in (ANY, stored):
        return data, stored
    if wanted not in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
        log.info("WADO-RS: %s sent in its stored syntax %s (%s not offered)", item.sop_instance_uid, stored, wanted)
        return data, stored
    try:
        ds = dcmread(io.BytesIO(data))
        if UID(stored).is_compressed:
            ds.decompress(generate_instance_uid=False)  # to Explicit VR LE, same instance (pydicom 3 would renumber it)
        ds.file_meta.TransferSyntaxUID = UID(wanted)
        buf = io.BytesIO()
        dcmwrite(buf, ds, enforce_file_format=True)
        return buf.getvalue(), wanted
    except Exception as exc:  # noqa: BLE001 - a codec or odd file: the stored bytes still serve
        log.warning("WADO-RS: %s sent as stored (%s): conversion to %s failed (%s)", item.sop_instance_uid,
                    stored, wanted, type(exc).__name__)
        return data, stored


# --- responses ----------------------------------------------------------------------------------
def _multipart(parts: Iterator[tuple[str, bytes]], part_type: str) -> StreamingResponse:
    boundary = new_boundary()
    return StreamingResponse(write_parts(parts, boundary), media_type=related_type(part_type, boundary))


def retrieve(request: Request, study: str, series: str | None = None, sop: str | None = None) -> StreamingResponse:
    """Instances as multipart/related; type="application/dicom"."""
    ctx = ctx_of(request)
    wanted = wanted_syntax(request, DICOM)
    found = plan(ctx, study, series, sop)
    started = time.monotonic()

    def parts() -> Iterator[tuple[str, bytes]]:
        sent = 0
        try:
            for item in items(ctx, found):
                data, syntax = encoded(item, wanted)
                sent += 1
                yield f"{DICOM}; transfer-syntax={syntax}", data
        finally:
            log.info("WADO-RS retrieve: %d of %d instance(s) sent, %.2f s", sent, found.count,
                     time.monotonic() - started)

    return _multipart(parts(), DICOM)


def _instance_url(root: str, ds: Dataset) -> str:
    return f"{root}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"


def instance_metadata(item: Item, root: str) -> dict[str, Any]:
    """One instance's header in the DICOM JSON model; pixel data and large values as BulkDataURIs."""
    ds = dcmread(item.path, stop_before_pixels=True)
    url = _instance_url(root, ds)
    out = dataset_json(ds, bulk_base=url)
    out["00083002"] = {"vr": "UI", "Value": [item.transfer_syntax_uid or ExplicitVRLittleEndian]}
    if "Rows" in ds:
        small = (int(ds.get("BitsAllocated") or 16) <= 8
                 or UID(item.transfer_syntax_uid or "1.2.840.10008.1.2.1").is_compressed)
        out["7FE00010"] = {"vr": "OB" if small else "OW", "BulkDataURI": f"{url}/bulkdata/7FE00010"}
    return out


def metadata(request: Request, study: str, series: str | None = None, sop: str | None = None) -> StreamingResponse:
    """Headers of the named instances as a DICOM JSON array (streamed)."""
    ctx = ctx_of(request)
    found = plan(ctx, study, series, sop)
    root = service_root(request)
    return StreamingResponse(json_array(instance_metadata(i, root) for i in items(ctx, found)),
                             media_type=DICOM_JSON)


def _frame_numbers(text: str) -> list[int]:
    try:
        numbers = [int(n) for n in text.split(",") if n.strip()]
    except ValueError:
        raise Refused(400, "frame numbers must be a comma-separated list of integers") from None
    if not numbers or min(numbers) < 1:
        raise Refused(400, "frame numbers start at 1")
    return numbers


def _load(item: Item) -> Dataset:
    try:
        return dcmread(item.path)
    except OSError as exc:
        raise Refused(503, f"stored file unreadable ({type(exc).__name__})") from None


def frame_parts(ds: Dataset, stored: str, numbers: list[int], wanted: str) -> list[tuple[str, bytes]]:
    """The requested frames as (content type, bytes): uncompressed little endian, or as stored
    when the client takes any syntax (or the stored one) and the instance is compressed."""
    frames = int(ds.get("NumberOfFrames") or 1)
    missing = [n for n in numbers if n > frames]
    if missing:
        raise Refused(404, f"frame {missing[0]} does not exist (the instance has {frames})")
    syntax = UID(stored or ExplicitVRLittleEndian)
    if syntax.is_compressed and wanted in (ANY, str(syntax)) and str(syntax) in FRAME_MEDIA:
        fragments = list(generate_frames(ds.PixelData, number_of_frames=frames))
        media = f"{FRAME_MEDIA[str(syntax)]}; transfer-syntax={syntax}"
        return [(media, fragments[n - 1]) for n in numbers]
    if syntax.is_compressed:
        try:
            ds.decompress(generate_instance_uid=False)
        except Exception as exc:  # noqa: BLE001 - missing codec: say so instead of a 500
            raise Refused(406, f"frames of {syntax.name} cannot be decompressed here ({type(exc).__name__}); "
                               "ask with transfer-syntax=*") from None
    bits = int(ds.get("BitsAllocated") or 0)
    if bits % 8:
        raise Refused(406, f"frames with BitsAllocated {bits} are not offered")
    size = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel") or 1) * bits // 8
    pixels = ds.PixelData
    media = f"{OCTETS}; transfer-syntax={ExplicitVRLittleEndian}"
    return [(media, bytes(pixels[(n - 1) * size:n * size])) for n in numbers]


def _find_element(ds: Dataset, tag: int) -> DataElement | None:
    if tag in ds:
        return ds[tag]
    for elem in ds:
        if elem.VR == "SQ":
            for child in elem.value:
                found = _find_element(child, tag)
                if found is not None:
                    return found
    return None


# --- routes -------------------------------------------------------------------------------------
@router.get("/studies/{study}")
def retrieve_study(study: str, request: Request, _: Reader) -> StreamingResponse:
    """WADO-RS: every instance of a study."""
    return retrieve(request, study)


@router.get("/studies/{study}/series/{series}")
def retrieve_series(study: str, series: str, request: Request, _: Reader) -> StreamingResponse:
    """WADO-RS: every instance of a series (an on-demand series is derived while it streams)."""
    return retrieve(request, study, series)


@router.get("/studies/{study}/series/{series}/instances/{sop}")
def retrieve_instance(study: str, series: str, sop: str, request: Request, _: Reader) -> StreamingResponse:
    """WADO-RS: one instance."""
    return retrieve(request, study, series, sop)


@router.get("/studies/{study}/metadata")
def study_metadata(study: str, request: Request, _: Reader) -> StreamingResponse:
    """WADO-RS: metadata of every instance of a study."""
    return metadata(request, study)


@router.get("/studies/{study}/series/{series}/metadata")
def series_metadata(study: str, series: str, request: Request, _: Reader) -> StreamingResponse:
    """WADO-RS: metadata of every instance of a series."""
    return metadata(request, study, series)


@router.get("/studies/{study}/series/{series}/instances/{sop}/metadata")
def instance_metadata_route(study: str, series: str, sop: str, request: Request, _: Reader) -> StreamingResponse:
    """WADO-RS: metadata of one instance."""
    return metadata(request, study, series, sop)


@router.get("/studies/{study}/series/{series}/instances/{sop}/frames/{frames}")
def retrieve_frames(study: str, series: str, sop: str, frames: str, request: Request, _: Reader) -> StreamingResponse:
    """WADO-RS: frames as multipart/related; type="application/octet-stream" (uncompressed unless
    the client accepts the stored syntax, e.g. transfer-syntax=*)."""
    numbers = _frame_numbers(frames)
    wanted = wanted_syntax(request, OCTETS)
    item = _single(plan(ctx_of(request), study, series, sop))
    parts = frame_parts(_load(item), item.transfer_syntax_uid, numbers, wanted)
    return _multipart(iter(parts), OCTETS)


@router.get("/studies/{study}/series/{series}/instances/{sop}/bulkdata/{tag}")
def retrieve_bulkdata(study: str, series: str, sop: str, tag: str, request: Request, _: Reader) -> StreamingResponse:
    """WADO-RS: the value of one element named by a BulkDataURI of the metadata."""
    try:
        number = int(tag, 16)
    except ValueError:
        raise Refused(400, "bulk data is named by an 8-digit hexadecimal tag") from None
    item = _single(plan(ctx_of(request), study, series, sop))
    elem = _find_element(_load(item), number)
    if elem is None or not isinstance(elem.value, (bytes, bytearray)):
        raise Refused(404, f"the instance has no bulk data element {tag}")
    return _multipart(iter([(OCTETS, bytes(elem.value))]), OCTETS)


def _rendered(request: Request, study: str, series: str, sop: str, frame: int) -> Response:
    ranges = [m.type for m in accept_list(request.headers.get("accept"))] or ["image/jpeg"]
    media = next((m for m in ranges if m in render.MEDIA_TYPES),
                 "image/jpeg" if any(m in ("*/*", "image/*") for m in ranges) else None)
    if media is None:
        raise Refused(406, "rendered images are image/jpeg or image/png")
    params = request.query_params
    try:
        window = render.parse_window(params.get("window"), params.get("preset"))
        viewport = render.parse_viewport(params.get("viewport"))
        quality = int(params.get("quality") or 90)
        item = _single(plan(ctx_of(request), study, series, sop))
        image = render.frame_image(_load(item), frame, window)
    except (render.RenderError, ValueError) as exc:
        raise Refused(400, str(exc)) from None
    return Response(render.encode(image, media, quality, viewport), media_type=media)


@router.get("/studies/{study}/series/{series}/instances/{sop}/rendered")
def rendered_instance(study: str, series: str, sop: str, request: Request, _: Reader) -> Response:
    """WADO-RS rendered: the first frame as image/jpeg (default) or image/png, windowed."""
    return _rendered(request, study, series, sop, 1)


@router.get("/studies/{study}/series/{series}/instances/{sop}/frames/{frame}/rendered")
def rendered_frame(study: str, series: str, sop: str, frame: int, request: Request, _: Reader) -> Response:
    """WADO-RS rendered: one frame, windowed (window=center,width[,function] or preset=lung...)."""
    return _rendered(request, study, series, sop, frame)
