"""QIDO-RS (PS3.18 10.6): studies, series and instances searched with C-FIND's matching.

A request becomes a C-FIND identifier (`context.build_query`) and is answered by
`dicom_node.qr.find.find`, so wildcards, ranges, lists, the count attributes and the on-demand
virtual series are exactly C-FIND's. Fuzzy matching is not offered (a Warning says so).
Results are capped by query_retrieve.max_results like C-FIND; past the cap a Warning header asks
for paging (PS3.18 8.3.4.4.3 "limit"/"offset").
"""
from __future__ import annotations

import itertools
import logging
import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from sqlalchemy.exc import SQLAlchemyError

from dicom_node.dicomweb.context import (
    Reader,
    Refused,
    bad_query,
    build_query,
    ctx_of,
    keyword_of,
    service_root,
)
from dicom_node.dicomweb.json_model import DICOM_JSON, dataset_json, dumps
from dicom_node.multipart import accept_list
from dicom_node.qr.attributes import ATTRIBUTES, Level, Model
from dicom_node.qr.find import FindOutcome, find
from dicom_node.qr.matching import QueryError

log = logging.getLogger("srnode.dicomweb")
router = APIRouter()

# Returned without includefield (PS3.18 Table 10.6.3-3..5, the ones the index holds).
DEFAULT_KEYS = {
    Level.STUDY: ["StudyDate", "StudyTime", "AccessionNumber", "ModalitiesInStudy", "ReferringPhysicianName",
                  "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyID",
                  "StudyDescription", "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances"],
    Level.SERIES: ["Modality", "SeriesDescription", "SeriesNumber", "SeriesInstanceUID", "BodyPartExamined",
                   "NumberOfSeriesRelatedInstances"],
    Level.IMAGE: ["SOPClassUID", "SOPInstanceUID", "InstanceNumber", "Rows", "Columns", "NumberOfFrames",
                  "AvailableTransferSyntaxUID"],
}
CONTROL = frozenset({"includefield", "limit", "offset", "fuzzymatching"})
JSON_TYPES = frozenset({DICOM_JSON, "application/json", "*/*", "application/*"})


def _non_negative(request: Request, name: str) -> int | None:
    text = request.query_params.get(name)
    if text is None or text == "":
        return None
    if not text.isdigit():
        raise Refused(400, f"{name} must be a non-negative integer")
    return int(text)


def _values(request: Request, level: Level, path_uids: dict[str, str]) -> dict[str, str | None]:
    """keyword → query value ("" for return-only keys), from the path, the parameters and includefield."""
    values: dict[str, str | None] = {}
    # Levels above the query level that the path does not fix are described by their defaults too.
    for key_level in (Level.STUDY, Level.SERIES, Level.IMAGE):
        fixed = {Level.STUDY: "StudyInstanceUID", Level.SERIES: "SeriesInstanceUID"}.get(key_level)
        if key_level == level or (key_level < level and fixed not in path_uids):
            values.update(dict.fromkeys(DEFAULT_KEYS[key_level], ""))
    for name, value in request.query_params.multi_items():
        if name.lower() in CONTROL:
            continue
        keyword = keyword_of(name)
        if keyword in path_uids:
            raise Refused(400, f"{keyword} is given by the path")
        if ATTRIBUTES.get(keyword) is not None and ATTRIBUTES[keyword].vr == "UI":
            value = value.replace(",", "\\")  # PS3.18 8.3.4.1: a UID list is comma-separated
        # A repeated parameter is list matching, as a backslash-separated C-FIND value.
        previous = values.get(keyword)
        values[keyword] = f"{previous}\\{value}" if previous else value
    for item in request.query_params.getlist("includefield"):
        for name in filter(None, (n.strip() for n in item.split(","))):
            if name.lower() == "all":
                values.update({a.keyword: values.get(a.keyword) or "" for a in ATTRIBUTES.values()
                               if a.level_in(Model.STUDY_ROOT) <= level})
            else:
                values.setdefault(keyword_of(name), "")
    values.update(path_uids)
    # Counts are computed per row of their own level only (NumberOfSeriesRelatedInstances of an
    # instance row would count the wrong thing): above the query level they are left out.
    return {k: v for k, v in values.items()
            if k not in ATTRIBUTES or not ATTRIBUTES[k].computed or ATTRIBUTES[k].level_in(Model.STUDY_ROOT) == level}


def _retrieve_url(root: str, ds: Any, level: Level) -> str:
    url = f"{root}/studies/{ds.StudyInstanceUID}"
    if level >= Level.SERIES:
        url += f"/series/{ds.SeriesInstanceUID}"
    if level >= Level.IMAGE:
        url += f"/instances/{ds.SOPInstanceUID}"
    return url


def search(request: Request, level: Level, path_uids: dict[str, str]) -> Response:
    """Answer one QIDO-RS request at `level`, its path fixing `path_uids`."""
    started = time.monotonic()
    if not any(m.type in JSON_TYPES for m in accept_list(request.headers.get("accept"))) and \
            request.headers.get("accept"):
        raise Refused(406, f"search results are given as {DICOM_JSON} only")
    ctx = ctx_of(request)
    limit, offset = _non_negative(request, "limit"), _non_negative(request, "offset") or 0
    try:
        query = build_query(level, _values(request, level, path_uids))
    except QueryError as exc:
        raise bad_query(exc) from None
    if limit == 0:  # (find's limit 0 means "no limit")
        return Response(b"[]", media_type=DICOM_JSON)
    cap = ctx.cfg.query_retrieve.max_results
    wanted = min(limit, cap) if limit is not None and cap else (limit if limit is not None else cap)
    outcome = FindOutcome()
    root = service_root(request)
    results: list[dict[str, Any]] = []
    try:
        with ctx.sessions() as session:
            found = find(session, query, limit=offset + wanted if wanted else 0, provider=ctx.on_demand,
                         outcome=outcome)
            for ds in itertools.islice(found, offset, None):
                del ds.QueryRetrieveLevel  # a DIMSE control key, not part of a QIDO-RS result
                ds.RetrieveURL = _retrieve_url(root, ds, level)
                results.append(dataset_json(ds))
    except SQLAlchemyError as exc:
        raise Refused(503, f"index query failed ({type(exc).__name__})") from None
    headers: dict[str, str] = {}
    warnings = []
    if outcome.truncated and (limit is None or (cap and limit > cap)):
        warnings.append(f'299 srnode "The number of results exceeded the maximum supported by the server '
                        f'({cap}). Additional results can be requested with offset."')
    if (request.query_params.get("fuzzymatching") or "").lower() == "true":
        warnings.append('299 srnode "Fuzzy matching is not supported; exact matching was used."')
    if warnings:
        headers["Warning"] = ", ".join(warnings)
    log.info("QIDO-RS %s level: %d keys matched on, %d results, %.0f ms", level.name, len(query.conditions),
             len(results), 1000 * (time.monotonic() - started))
    return Response(dumps(results), media_type=DICOM_JSON, headers=headers)


@router.get("/studies")
def search_studies(request: Request, _: Reader) -> Response:
    """QIDO-RS: all studies matching the parameters."""
    return search(request, Level.STUDY, {})


@router.get("/series")
def search_all_series(request: Request, _: Reader) -> Response:
    """QIDO-RS: series of any study."""
    return search(request, Level.SERIES, {})


@router.get("/studies/{study}/series")
def search_series(study: str, request: Request, _: Reader) -> Response:
    """QIDO-RS: series of one study (on-demand upscaled series included, like C-FIND)."""
    return search(request, Level.SERIES, {"StudyInstanceUID": study})


@router.get("/instances")
def search_all_instances(request: Request, _: Reader) -> Response:
    """QIDO-RS: instances of any study."""
    return search(request, Level.IMAGE, {})


@router.get("/studies/{study}/instances")
def search_study_instances(study: str, request: Request, _: Reader) -> Response:
    """QIDO-RS: instances of one study."""
    return search(request, Level.IMAGE, {"StudyInstanceUID": study})


@router.get("/studies/{study}/series/{series}/instances")
def search_instances(study: str, series: str, request: Request, _: Reader) -> Response:
    """QIDO-RS: instances of one series."""
    return search(request, Level.IMAGE, {"StudyInstanceUID": study, "SeriesInstanceUID": series})
