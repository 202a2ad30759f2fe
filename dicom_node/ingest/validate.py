"""Receive-time validation of a parsed dataset (docs/storage.md, "Bad input"): SOP class, image
attributes, pixel data."""
from __future__ import annotations

import io
from functools import lru_cache

from pydicom.dataset import Dataset
from pydicom.encaps import parse_fragments
from pydicom.pixels.utils import get_expected_length
from pydicom.uid import UID

from dicom_node.ingest.errors import BadUID, MalformedDataset, SOPClassMismatch
from dicom_node.ingest.header import PIXEL_TAGS, _int
from dicom_node.storage import InvalidUID, uid_for_log, validate_uid

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
