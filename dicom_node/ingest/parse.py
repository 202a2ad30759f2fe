"""Part 10 bytes <-> pydicom Dataset: the quiet decode of received bytes (pydicom's warnings kept
out of the log, see the package doc), `parse_header` (decode + validate) and `encode_part10`.

Importing this module calls `quiet_library_warnings` (process-wide, idempotent).
"""
from __future__ import annotations

import io
import logging
import threading

from pydicom import config as pydicom_config
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.tag import Tag
from pydicom.uid import UID
from pydicom.valuerep import VR

from dicom_node.ingest.errors import MalformedDataset, RejectedInstance
from dicom_node.ingest.validate import validate_instance

# Module-level on purpose: a per-thread "parsing now" flag for the process-wide log filter (shares nothing).
_parsing = threading.local()


class _QuietWhileParsing(logging.Filter):
    """Drop pydicom's own warnings about a received dataset: the node logs one line per refusal."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(_parsing, "active", False)


def quiet_library_warnings() -> None:
    """Keep received values out of pydicom's warnings, process-wide (idempotent; see the package doc).

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
