"""Put an instance on disk and in the index: the one path every producer uses.

The C-STORE handler, the derived-series writer, Q/R tests and fixtures all call
`store_encoded` (bytes as received), `store_dataset` (a pydicom Dataset) or their batch forms
(`store_encoded_many`, `store_datasets`: one commit for several instances), which validate,
write the file atomically and upsert Patient/Study/Series/Instance through `index_instance`.

Policies (see docs/storage.md):
- Duplicate SOP Instance UID in the same series: the new file replaces the old one (last write
  wins; a PACS re-sends to correct) and the row is updated. The same SOP Instance UID arriving
  under a different study/series is refused (`DuplicateConflict`).
- Any arrival (new or duplicate) sets the series back to `receiving` and restarts its
  stability timer, whatever its state: the stable hook then fires again and routing (which is
  idempotent) decides whether there is anything new to do.
- Objects without pixel data (SR, RTSTRUCT, presentation states, ...) are stored and indexed with
  is_image=False; assembly never hands a series without images to the next stage. An image
  storage SOP class without pixel data is refused (a truncated image, not a non-image object).
- Receive-time validation (`parse_header`, `validate_instance`) follows docs/storage.md, "Bad input".

PHI: pydicom reports odd values through `warnings.warn` as well as logging, quoting the raw bytes
(a corrupt length field makes them include the patient's name and ID). Importing this module turns
off pydicom's value validation on reading (the main source) and routes every warning through
logging (`logging.captureWarnings`), where `_QuietWhileParsing` drops whatever pydicom says while a
received dataset is parsed in that thread: the node logs one line per refusal, without values.
"""
from __future__ import annotations

import io
import logging
import math
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar, cast

from pydicom import config as pydicom_config
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import parse_fragments
from pydicom.filewriter import dcmwrite
from pydicom.pixels.utils import get_expected_length
from pydicom.tag import Tag
from pydicom.uid import UID
from pydicom.valuerep import VR
from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.engine import Row
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.group_commit import BatchFailed, committer_for
from dicom_node.index.models import Instance, Patient, Series, SeriesState, Study
from dicom_node.storage import (
    InvalidUID,
    atomic_write,
    fsync_dir,
    instance_rel_path,
    resolve_in,
    uid_for_log,
    validate_uid,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

_parsing = threading.local()


class _QuietWhileParsing(logging.Filter):
    """Drop pydicom's own warnings about a received dataset: the node logs one line per refusal."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(_parsing, "active", False)


def quiet_library_warnings() -> None:
    """Keep received values out of pydicom's warnings, process-wide (idempotent; see module doc).

    `warnings.catch_warnings` would be the obvious tool but is not thread-safe (associations run
    in threads), hence a process-wide logging route plus a per-thread filter.
    """
    pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE
    logging.captureWarnings(True)
    for name in ("pydicom", "py.warnings"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _QuietWhileParsing) for f in logger.filters):
            logger.addFilter(_QuietWhileParsing())


quiet_library_warnings()

PIXEL_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)  # PixelData, FloatPixelData, DoubleFloatPixelData
# Bits Allocated the standard allows: 1 or a multiple of 8 in general (PS3.3 C.7.6.3.1; 1..64 in
# practice), exactly 16 for CT and MR images (C.8.2.1.1.4, C.8.3.1.1.4, C.8.15.3.x), 32 for Float and
# 64 for Double Float Pixel Data (C.7.6.3.1.1).
_BITS_ALLOWED = frozenset({1, 8, 16, 32, 64})
_BITS_BY_SOP_CLASS = {
    "1.2.840.10008.5.1.4.1.1.2": frozenset({16}),  # CT Image Storage
    "1.2.840.10008.5.1.4.1.1.2.1": frozenset({16}),  # Enhanced CT Image Storage
    "1.2.840.10008.5.1.4.1.1.4": frozenset({16}),  # MR Image Storage
}
_BITS_BY_PIXEL_TAG = {0x7FE00008: frozenset({32}), 0x7FE00009: frozenset({64})}
_KNOWN_VRS = frozenset(v.value for v in VR)
# Elements the index reads (`instance_values`, `index_instance`) or validation needs. They are
# decoded while the parse is quiet, in the receiving thread: the index runs in the group-commit
# thread, where a late decode could otherwise fail (0x0110) or warn with the raw bytes.
_DECODED_AT_RECEIVE = (
    "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID", "SpecificCharacterSet",
    "PatientID", "IssuerOfPatientID", "PatientName", "PatientBirthDate", "PatientSex",
    "StudyDate", "StudyTime", "AccessionNumber", "StudyID", "StudyDescription", "ReferringPhysicianName",
    "Modality", "SeriesNumber", "SeriesDescription", "BodyPartExamined", "InstanceNumber",
    "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SliceLocation",
    "Rows", "Columns", "NumberOfFrames", "SamplesPerPixel", "PhotometricInterpretation", "BitsAllocated",
)


class RejectedInstance(ValueError):
    """An instance the node refuses; `status` is the DIMSE failure status to answer with."""

    status = 0xC000  # Failure: cannot understand


class DuplicateConflict(RejectedInstance):
    """The SOP Instance UID is already indexed under a different study or series."""

    status = 0xC001


class MalformedDataset(RejectedInstance):
    """Truncated, undecodable, or with missing/short pixel data."""

    status = 0xC002


class BadUID(RejectedInstance):
    """A UID that cannot be used (invalid per PS3.5; could otherwise name a path)."""

    status = 0xC003


class SOPClassMismatch(RejectedInstance):
    """No SOP Class UID, or not the one of the presentation context / C-STORE request."""

    status = 0xA900  # Error: data set does not match SOP class


@dataclass(frozen=True)
class StoreResult:
    """What `store_encoded`/`store_dataset` did, for the caller's status and log line."""

    instance_pk: int
    series_pk: int
    rel_path: str
    file_size: int
    duplicate: bool
    is_image: bool
    # The stored instance's validated UIDs, set by store_encoded (STOW-RS answers with them
    # without decoding the instance a second time); "" where not set.
    sop_class_uid: str = ""
    sop_instance_uid: str = ""
    study_uid: str = ""
    series_uid: str = ""


def utcnow() -> datetime:
    return datetime.now(UTC)


def _text(ds: Dataset, keyword: str, limit: int) -> str:
    value = ds.get(keyword)
    if value is None:
        return ""
    if not isinstance(value, (str, bytes)) and hasattr(value, "__iter__") and not hasattr(value, "family_name"):
        text = "\\".join(str(v) for v in value)
    else:
        text = str(value)
    # PostgreSQL refuses NUL in text; columns have fixed widths.
    return text.replace("\x00", "").strip()[:limit]


def _int(ds: Dataset, keyword: str) -> int | None:
    try:
        value = ds.get(keyword)
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _floats(ds: Dataset, keyword: str, n: int) -> list[float] | None:
    try:
        value = ds.get(keyword)
        if value is None:
            return None
        out = [float(v) for v in value]
        return out if len(out) == n and all(math.isfinite(v) for v in out) else None
    except (TypeError, ValueError):
        return None


def slice_position(ds: Dataset) -> float | None:
    """Position (mm) along the slice normal, from IPP and IOP; SliceLocation as fallback."""
    ipp = _floats(ds, "ImagePositionPatient", 3)
    iop = _floats(ds, "ImageOrientationPatient", 6)
    if ipp and iop:
        r, c = iop[:3], iop[3:]
        n = (r[1] * c[2] - r[2] * c[1], r[2] * c[0] - r[0] * c[2], r[0] * c[1] - r[1] * c[0])
        return float(sum(a * b for a, b in zip(ipp, n)))
    try:
        loc = ds.get("SliceLocation")
        return float(loc) if loc not in (None, "") else None
    except (TypeError, ValueError):
        return None


def has_pixel_data(ds: Dataset) -> bool:
    """True if the dataset carries any kind of pixel data element."""
    return any(tag in ds for tag in PIXEL_TAGS)


def instance_values(ds_header: Dataset, rel_path: str | PurePosixPath, file_size: int, transfer_syntax: str,
                    sender_ae: str, now: datetime, is_image: bool | None = None) -> dict[str, Any]:
    """The Instance columns taken from one header (everything but keys and series_pk)."""
    ipp = _floats(ds_header, "ImagePositionPatient", 3)
    iop = _floats(ds_header, "ImageOrientationPatient", 6)
    spacing = _floats(ds_header, "PixelSpacing", 2)
    return {
        "sop_class_uid": _text(ds_header, "SOPClassUID", 64),
        "instance_number": _int(ds_header, "InstanceNumber"),
        "transfer_syntax_uid": str(transfer_syntax)[:64],
        "file_path": str(rel_path),
        "file_size": int(file_size),
        "rows": _int(ds_header, "Rows"),
        "columns": _int(ds_header, "Columns"),
        "number_of_frames": _int(ds_header, "NumberOfFrames"),
        "slice_location": slice_position(ds_header),
        "image_position": "\\".join(f"{v:g}" for v in ipp)[:128] if ipp else "",
        "image_orientation": "\\".join(f"{v:g}" for v in iop)[:256] if iop else "",
        "pixel_spacing": "\\".join(f"{v:g}" for v in spacing)[:64] if spacing else "",
        "is_image": has_pixel_data(ds_header) if is_image is None else is_image,
        "received_at": now,
        "sender_ae": (sender_ae or "").strip()[:16],
    }


# (database URL, study UID, series UID) -> Series primary key, for the receive hot path: an
# instance of a series already seen costs one SELECT, one INSERT and one UPDATE (no ORM).
_SERIES_PK_CACHE: OrderedDict[tuple[str, str, str], int] = OrderedDict()
_SERIES_PK_CACHE_SIZE = 4096
_cache_lock = threading.Lock()


def _cache_get(key: tuple[str, str, str]) -> int | None:
    with _cache_lock:
        return _SERIES_PK_CACHE.get(key)


def _cache_put(key: tuple[str, str, str], pk: int) -> None:
    with _cache_lock:
        _SERIES_PK_CACHE[key] = pk
        _SERIES_PK_CACHE.move_to_end(key)
        while len(_SERIES_PK_CACHE) > _SERIES_PK_CACHE_SIZE:
            _SERIES_PK_CACHE.popitem(last=False)


def _cache_drop(key: tuple[str, str, str]) -> None:
    with _cache_lock:
        _SERIES_PK_CACHE.pop(key, None)


def _index_known_series(session: Session, series_pk: int, ds_header: Dataset, rel_path: str | PurePosixPath,
                        file_size: int, transfer_syntax: str, sender_ae: str) -> tuple[int, bool, bool]:
    """Core-level index of an instance of a series known to exist: (instance pk, duplicate, is_image)."""
    sop_uid = validate_uid(ds_header.get("SOPInstanceUID"), "SOPInstanceUID")
    now = utcnow()
    values = instance_values(ds_header, rel_path, file_size, transfer_syntax, sender_ae, now)
    conn = session.connection()
    existing = conn.execute(_SELECT_INSTANCE, {"sop": sop_uid}).first()
    if existing is not None and existing.series_pk != series_pk:
        raise DuplicateConflict(f"SOPInstanceUID {sop_uid} is already indexed under another series")
    series_uid = validate_uid(ds_header.get("SeriesInstanceUID"), "SeriesInstanceUID")
    updated = conn.execute(_TOUCH_SERIES, {"pk": series_pk, "uid": series_uid, "now": now})
    if updated.rowcount != 1:
        raise _StaleSeriesCache()
    if existing is None:
        inserted = conn.execute(_INSERT_INSTANCE, {"series_pk": series_pk, "sop_instance_uid": sop_uid, **values})
        pk = cast("Row[Any]", inserted.inserted_primary_key)[0]  # set for a single-row INSERT
        return int(pk), False, bool(values["is_image"])
    conn.execute(_UPDATE_INSTANCE, {"ipk": existing.id, **values})
    return int(existing.id), True, bool(values["is_image"])


# Built once: compiling a statement per instance costs more CPU than executing it.
_SELECT_INSTANCE = select(Instance.id, Instance.series_pk).where(Instance.sop_instance_uid == bindparam("sop"))
_TOUCH_SERIES = (
    # The UID check catches a cached key whose row was deleted and its id reused.
    update(Series).where(Series.id == bindparam("pk"), Series.series_uid == bindparam("uid"))
    .values(state=SeriesState.receiving, stable_at=None, last_received_at=bindparam("now"), recycled_at=None)
)
_INSERT_INSTANCE = insert(Instance)
_UPDATE_INSTANCE = update(Instance).where(Instance.id == bindparam("ipk"))


class _StaleSeriesCache(Exception):
    """The cached series row is gone (e.g. deleted by an admin); take the full path."""


def index_instance(
    session: Session,
    ds_header: Dataset,
    rel_path: str | PurePosixPath,
    file_size: int,
    transfer_syntax: str,
    sender_ae: str,
    derived_from_job: int | None = None,
    is_image: bool | None = None,
) -> Instance:
    """Upsert Patient/Study/Series/Instance rows for one stored file (flushes, does not commit).

    Raises DuplicateConflict if the SOP Instance UID is already indexed in another series.
    """
    study_uid = validate_uid(ds_header.get("StudyInstanceUID"), "StudyInstanceUID")
    series_uid = validate_uid(ds_header.get("SeriesInstanceUID"), "SeriesInstanceUID")
    sop_uid = validate_uid(ds_header.get("SOPInstanceUID"), "SOPInstanceUID")
    now = utcnow()
    sender = (sender_ae or "").strip()[:16]

    study = session.scalar(select(Study).where(Study.study_uid == study_uid))
    if study is None:
        pid, issuer = _text(ds_header, "PatientID", 64), _text(ds_header, "IssuerOfPatientID", 64)
        patient = session.scalar(select(Patient).where(Patient.patient_id == pid, Patient.issuer == issuer))
        if patient is None:
            patient = Patient(
                patient_id=pid,
                issuer=issuer,
                patient_name=_text(ds_header, "PatientName", 324),
                birth_date=_text(ds_header, "PatientBirthDate", 8),
                sex=_text(ds_header, "PatientSex", 16),
            )
            session.add(patient)
        study = Study(
            study_uid=study_uid,
            patient=patient,
            study_date=_text(ds_header, "StudyDate", 8),
            study_time=_text(ds_header, "StudyTime", 16),
            accession_number=_text(ds_header, "AccessionNumber", 16),
            study_id=_text(ds_header, "StudyID", 16),
            study_description=_text(ds_header, "StudyDescription", 64),
            referring_physician=_text(ds_header, "ReferringPhysicianName", 324),
        )
        session.add(study)

    series = session.scalar(select(Series).where(Series.series_uid == series_uid))
    if series is None:
        series = Series(
            series_uid=series_uid,
            study=study,
            modality=_text(ds_header, "Modality", 16),
            series_number=_int(ds_header, "SeriesNumber"),
            series_description=_text(ds_header, "SeriesDescription", 64),
            body_part=_text(ds_header, "BodyPartExamined", 64),
            calling_ae=sender,
            first_received_at=now,
            derived_from_job=derived_from_job,
        )
        session.add(series)
    elif series.study.study_uid != study_uid:
        raise DuplicateConflict(f"SeriesInstanceUID {series_uid} is already indexed under another study")
    if derived_from_job is not None:
        series.derived_from_job = derived_from_job
    # Any arrival restarts the stability timer (documented policy: routing is idempotent).
    series.state = SeriesState.receiving
    series.stable_at = None
    series.last_received_at = now
    series.recycled_at = None  # a recycled series sent again is a live series again, not history

    instance = session.scalar(select(Instance).where(Instance.sop_instance_uid == sop_uid))
    if instance is None:
        instance = Instance(sop_instance_uid=sop_uid, series=series)
        session.add(instance)
    elif instance.series_pk != series.id:
        raise DuplicateConflict(f"SOPInstanceUID {sop_uid} is already indexed under another series")
    values = instance_values(ds_header, rel_path, file_size, transfer_syntax, sender, now, is_image)
    for column, value in values.items():
        setattr(instance, column, value)
    session.flush()
    return instance


def parse_header(data: bytes, expected_sop_class_uid: str | None = None) -> Dataset:
    """Parse a DICOM Part 10 byte string far enough to index it, and validate it.

    Raises a RejectedInstance (see `validate_instance`): MalformedDataset for truncated or
    undecodable input, SOPClassMismatch, or MalformedDataset for bad image attributes/pixel data.
    """
    ds = _decode_quietly(data)
    validate_instance(ds, expected_sop_class_uid)
    return ds


def decode_header(data: bytes) -> Dataset:
    """Parse Part 10 bytes without validating them, pydicom's warnings kept out of the log (see the
    module doc); MalformedDataset if undecodable. STOW-RS reads the UIDs of a part it may refuse."""
    return _decode_quietly(data)


def _decode_quietly(data: bytes) -> Dataset:
    _parsing.active = True
    step = "dataset"
    try:
        # A full parse of a 0.5 MB CT takes ~1 ms: elements stay raw until used.
        ds = dcmread(io.BytesIO(data), force=False)
        ds.file_meta.get("TransferSyntaxUID")
        unknown = _unknown_vr(ds)
        if unknown:
            raise MalformedDataset(unknown)
        for step in _DECODED_AT_RECEIVE:
            str(ds.get(step))  # str(): a person name decodes its bytes only when read
    except RejectedInstance:
        raise
    except Exception as exc:  # noqa: BLE001 - any parser failure is a malformed dataset, never a crash
        # Parser messages may quote the received bytes (PHI): name the element and the error type only.
        raise MalformedDataset(f"undecodable {step} ({type(exc).__name__})") from None
    finally:
        _parsing.active = False
    return ds


def _unknown_vr(ds: Dataset) -> str | None:
    """Name the first top-level element whose explicit VR pydicom cannot decode (it would fail later)."""
    for tag in ds.keys():
        vr = getattr(ds.get_item(tag), "VR", None)
        if vr is not None and vr not in _KNOWN_VRS:
            shown = vr if isinstance(vr, str) and vr.isascii() and vr.isalpha() else "?"
            return f"unknown VR {shown!r} in {Tag(tag)}"
    return None


@lru_cache(maxsize=512)
def requires_pixel_data(sop_class_uid: str) -> bool:
    """True for image storage SOP classes ("... Image Storage"): without pixel data they are broken images."""
    return "Image Storage" in UID(sop_class_uid).name


def validate_instance(ds: Dataset, expected_sop_class_uid: str | None = None) -> None:
    """Refuse what docs/storage.md ("Bad input") refuses; checks run in that order, the first decides.

    `expected_sop_class_uid`: the presentation context's abstract syntax (C-STORE), or None for
    the node's own producers.
    """
    sop_class = _check_sop_class(ds, expected_sop_class_uid)
    pixel_tag = next((t for t in PIXEL_TAGS if t in ds), None)
    if pixel_tag is None:
        if requires_pixel_data(sop_class):
            raise MalformedDataset(f"missing pixel data ({UID(sop_class).name} is an image SOP class)")
        if _int(ds, "Rows") and _int(ds, "Columns") and _int(ds, "BitsAllocated"):
            raise MalformedDataset("missing pixel data (Rows/Columns/BitsAllocated present, no Pixel Data)")
        return
    _check_image_attributes(ds, sop_class, pixel_tag)
    _check_pixel_data(ds, pixel_tag)


def _check_sop_class(ds: Dataset, expected: str | None) -> str:
    value = ds.get("SOPClassUID")
    sop_class = value.rstrip("\x00 ") if isinstance(value, str) else ""
    if not sop_class:
        raise SOPClassMismatch("no single SOP Class UID in the dataset")
    if expected is not None and sop_class != str(expected).rstrip("\x00 "):
        raise SOPClassMismatch(f"dataset's SOP Class UID {uid_for_log(sop_class)} does not match the "
                               f"presentation context's ({UID(str(expected)).name})")
    try:
        return validate_uid(sop_class, "SOPClassUID")
    except InvalidUID as exc:
        raise BadUID(str(exc)) from None


def _single_us(ds: Dataset, keyword: str) -> int | None:
    """The value of a one-valued US element (None if absent or of another VR, e.g. DS or SQ)."""
    elem = ds[keyword] if keyword in ds else None
    if elem is None or elem.VR != "US" or isinstance(elem.value, bool) or not isinstance(elem.value, int):
        return None
    return int(elem.value)


def _check_image_attributes(ds: Dataset, sop_class: str, pixel_tag: int) -> None:
    for keyword in ("Rows", "Columns", "SamplesPerPixel"):
        value = _single_us(ds, keyword)
        if value is None or value < 1:
            raise MalformedDataset(f"{keyword} must be one US value > 0")
    if not str(ds.get("PhotometricInterpretation") or "").strip():
        raise MalformedDataset("no PhotometricInterpretation")
    allowed = _BITS_BY_PIXEL_TAG.get(pixel_tag) or _BITS_BY_SOP_CLASS.get(sop_class, _BITS_ALLOWED)
    if _single_us(ds, "BitsAllocated") not in allowed:
        raise MalformedDataset(f"BitsAllocated must be one US value in {sorted(allowed)} for {UID(sop_class).name}")
    frames = ds.get("NumberOfFrames")
    if frames not in (None, "") and (not isinstance(frames, int) or int(frames) < 1):
        raise MalformedDataset("NumberOfFrames must be one integer >= 1")


def _check_pixel_data(ds: Dataset, pixel_tag: int) -> None:
    raw = ds.get_item(pixel_tag)
    value = getattr(raw, "value", None)
    length = getattr(raw, "length", None)
    if not isinstance(value, (bytes, bytearray)):
        raise MalformedDataset("undecodable pixel data element")
    got = len(value)
    undefined = length == 0xFFFFFFFF
    if length is not None and not undefined and got < length:
        raise MalformedDataset(f"truncated: pixel data element declares {length} bytes, {got} received")
    if got == 0:
        raise MalformedDataset("empty pixel data")
    encapsulated = UID(str(ds.file_meta.get("TransferSyntaxUID", ""))).is_encapsulated
    if undefined != (encapsulated and pixel_tag == 0x7FE00010):
        raise MalformedDataset("pixel data encoding (encapsulated or native) does not match the transfer syntax")
    if encapsulated:
        if not _has_fragment_data(value):
            raise MalformedDataset("encapsulated pixel data without a non-empty fragment")
        return
    expected = get_expected_length(ds, "bytes")
    if got < expected:
        raise MalformedDataset(f"short pixel data: {got} bytes, {expected} expected from Rows/Columns/BitsAllocated")
    # Longer is accepted: real files carry trailing padding (pydicom's MR_small_padded.dcm) and
    # readers ignore the excess; refusing them would bounce instances a PACS stores.


def _has_fragment_data(value: bytes | bytearray) -> bool:
    """True if encapsulated pixel data holds fragments, all complete, at least one non-empty."""
    # Items: (FFFE,E000) tag + 4-byte length; the first one is the Basic Offset Table.
    if len(value) < 8 or value[:4] != b"\xfe\xff\x00\xe0":
        return False
    buf = io.BytesIO(value)
    buf.seek(8 + int.from_bytes(value[4:8], "little"))
    try:
        _, offsets = parse_fragments(buf)  # absolute offsets into `value`
    except ValueError:
        return False
    lengths = [(o, int.from_bytes(value[o + 4:o + 8], "little")) for o in offsets]
    return any(n > 0 for _, n in lengths) and all(o + 8 + n <= len(value) for o, n in lengths)


def _commit_with_retry(factory: sessionmaker[Session], work: Any, attempts: int = 5) -> Any:
    # Parallel associations may race to create the same patient/study/series row, and SQLite may
    # answer "database is locked"; both resolve by simply doing the transaction again.
    for attempt in range(attempts):
        session = factory()
        try:
            result = work(session)
            session.commit()
            return result
        except (IntegrityError, OperationalError):
            session.rollback()
            if attempt == attempts - 1:
                raise
            time.sleep(0.02 * (attempt + 1))
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()
    raise RuntimeError("unreachable")


def _url_of(factory: sessionmaker[Session]) -> str:
    bind = factory.kw.get("bind")
    return str(getattr(bind, "url", id(factory)))


@dataclass(frozen=True)
class _Checked:
    """A parsed instance whose UIDs were validated, with its place under storage_dir."""

    ds: Dataset
    sop: str
    rel: PurePosixPath
    target: Path
    tsyntax: str
    series_key: tuple[str, str, str]


def _check(factory: sessionmaker[Session], storage_dir: Path, data: bytes,
           expected_sop_instance_uid: str | None = None, expected_sop_class_uid: str | None = None) -> _Checked:
    ds = parse_header(data, expected_sop_class_uid)
    try:
        study = validate_uid(ds.get("StudyInstanceUID"), "StudyInstanceUID")
        series = validate_uid(ds.get("SeriesInstanceUID"), "SeriesInstanceUID")
        sop = validate_uid(ds.get("SOPInstanceUID"), "SOPInstanceUID")
        if expected_sop_instance_uid is not None and sop != str(expected_sop_instance_uid).rstrip("\x00 "):
            raise BadUID("SOPInstanceUID in the dataset differs from the C-STORE request's")
        rel = instance_rel_path(study, series, sop)
    except InvalidUID as exc:
        raise BadUID(str(exc)) from None
    return _Checked(ds, sop, rel, resolve_in(storage_dir, rel), str(ds.file_meta.get("TransferSyntaxUID", "")),
                    (_url_of(factory), study, series))


def _index_checked(session: Session, item: _Checked, size: int, sender_ae: str,
                   derived_from_job: int | None) -> StoreResult:
    dup = session.scalar(select(Instance.id).where(Instance.sop_instance_uid == item.sop)) is not None
    inst = index_instance(session, item.ds, item.rel, size, item.tsyntax, sender_ae, derived_from_job)
    _cache_put(item.series_key, inst.series_pk)
    return StoreResult(inst.id, inst.series_pk, str(item.rel), size, dup, inst.is_image)


def _remove_new(targets: list[Path]) -> None:
    # Not acknowledged and not indexed: leave nothing behind.
    for target in targets:
        try:
            os.unlink(target)
        except FileNotFoundError:
            pass


def store_encoded(
    factory: sessionmaker[Session],
    storage_dir: Path,
    data: bytes,
    sender_ae: str,
    expected_sop_instance_uid: str | None = None,
    derived_from_job: int | None = None,
    expected_sop_class_uid: str | None = None,
) -> StoreResult:
    """Validate, write (atomic, fsynced) and index a Part 10 byte string; return what was done.

    `expected_sop_class_uid`: the presentation context's abstract syntax (a C-STORE's dataset must
    be of that class). Raises a RejectedInstance subclass (with a DIMSE status) for anything
    refused; nothing is left on disk or in the index for a refused instance.
    """
    item = _check(factory, storage_dir, data, expected_sop_instance_uid, expected_sop_class_uid)
    existed = item.target.exists()
    size = atomic_write(item.target, data, root=storage_dir)  # `target` is already resolved inside storage_dir

    def known_series(session: Session, series_pk: int) -> StoreResult:
        pk, dup, is_image = _index_known_series(session, series_pk, item.ds, item.rel, size, item.tsyntax, sender_ae)
        return StoreResult(pk, series_pk, str(item.rel), size, dup, is_image)

    def with_uids(result: StoreResult) -> StoreResult:
        _, study, series = item.series_key
        return replace(result, sop_class_uid=str(item.ds.get("SOPClassUID", "")), sop_instance_uid=item.sop,
                       study_uid=study, series_uid=series)

    try:
        cached = _cache_get(item.series_key) if derived_from_job is None else None
        if cached is not None:
            # Hot path: an instance of a series already seen, committed together with
            # whatever the other associations are storing right now.
            committer = committer_for(factory, clean_errors=(DuplicateConflict, _StaleSeriesCache))
            try:
                return with_uids(committer.run(lambda session: known_series(session, cached)))
            except _StaleSeriesCache:
                _cache_drop(item.series_key)
            except BatchFailed:
                pass  # redo it alone below
        return with_uids(_commit_with_retry(
            factory, lambda session: _index_checked(session, item, size, sender_ae, derived_from_job)))
    except BaseException:
        if not existed:
            _remove_new([item.target])
        raise


def store_encoded_many(
    factory: sessionmaker[Session],
    storage_dir: Path,
    items: Sequence[bytes],
    sender_ae: str,
    derived_from_job: int | None = None,
    also: Callable[[Session, list[StoreResult]], T] | None = None,
) -> tuple[list[StoreResult], T | None]:
    """Store several instances at once: each file written and fsynced, one directory fsync per
    directory, and every index row (plus whatever `also` adds, e.g. outbox rows) in one commit.

    All or nothing, like `store_encoded`: on any failure the new files are removed and no row
    is committed. Returns the results and `also`'s return value.
    """
    checked = [_check(factory, storage_dir, data) for data in items]
    new = [c.target for c in checked if not c.target.exists()]
    try:
        sizes = [atomic_write(c.target, data, root=storage_dir, sync_dir=False) for c, data in zip(checked, items)]
        for directory in dict.fromkeys(c.target.parent for c in checked):
            fsync_dir(directory)

        def work(session: Session) -> tuple[list[StoreResult], T | None]:
            results = [_index_checked(session, c, size, sender_ae, derived_from_job) for c, size in zip(checked, sizes)]
            return results, (also(session, results) if also is not None else None)

        return _commit_with_retry(factory, work)
    except BaseException:
        _remove_new(new)
        raise


def encode_part10(ds: Dataset) -> bytes:
    """A Dataset as DICOM Part 10 bytes (file meta filled in from the dataset if missing)."""
    if not getattr(ds, "file_meta", None) or "TransferSyntaxUID" not in ds.file_meta:
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = ds.SOPClassUID
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        meta.TransferSyntaxUID = UID("1.2.840.10008.1.2.1")
        ds.file_meta = meta
    buf = io.BytesIO()
    dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def store_datasets(
    factory: sessionmaker[Session],
    storage_dir: Path,
    datasets: Sequence[Dataset],
    sender_ae: str = "",
    derived_from_job: int | None = None,
    also: Callable[[Session, list[StoreResult]], T] | None = None,
) -> tuple[list[StoreResult], T | None]:
    """Write and index several pydicom Datasets in one transaction (see `store_encoded_many`)."""
    return store_encoded_many(factory, storage_dir, [encode_part10(ds) for ds in datasets], sender_ae,
                              derived_from_job, also)


def store_dataset(
    factory: sessionmaker[Session],
    storage_dir: Path,
    ds: Dataset,
    sender_ae: str = "",
    derived_from_job: int | None = None,
) -> StoreResult:
    """Write and index a pydicom Dataset (e.g. a derived instance) in one call."""
    return store_encoded(factory, storage_dir, encode_part10(ds), sender_ae, derived_from_job=derived_from_job)
