"""A seeded mutation corpus of one real CT instance: what a broken or hostile sender could send.

Every variant carries the same known patient name and ID (`PHI_NAME`, `PHI_ID`), so that a run can
grep everything the node wrote for them. Variants are Part 10 files whose File Meta Information is
intact (a C-STORE needs its SOP Class/Instance UIDs and transfer syntax); the mutations hit the
dataset that follows, which is sent over DIMSE byte for byte.

Two families:
* **semantic** variants, built with pydicom, each with the status docs/storage.md promises
  (`Variant.expected`): empty/short/long/missing pixel data, Rows/Columns/Bits/Frames out of range
  or of the wrong VR, bad UIDs, wrong or missing SOP Class, a few valid controls;
* **byte-level** variants from a seeded RNG, status not predicted: length fields set to 0xFFFF,
  0, odd or huge values, truncations in the header and in the pixel data, VR swaps, unknown VRs,
  bit flips in the header.

Used by bench/faults/fuzz_report.py and tests/faults/test_fuzz.py (bench must not import tests).
"""
from __future__ import annotations

import copy
import io
import random
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from pydicom import dcmread
from pydicom.config import IGNORE
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

PHI_NAME = "FUZZ^PHIMARKER"
PHI_ID = "PHIID12345"
# The name, the ID and their distinctive pieces: none may appear in anything the node writes.
PHI_MARKERS = (PHI_NAME, "PHIMARKER", "FUZZ", PHI_ID, "PHIID")

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
SUCCESS, SOP_CLASS_MISMATCH, MALFORMED, BAD_UID = 0x0000, 0xA900, 0xC002, 0xC003

# Explicit VR little endian: these VRs have 2 reserved bytes and a 4-byte length (PS3.5 7.1.2).
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT", b"UV"}
_SHORT_VRS = [b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FD", b"FL", b"IS", b"LO", b"LT", b"PN",
              b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US"]
_UNKNOWN_VRS = [b"ZZ", b"QQ", b"XY", b"JJ", b"KW", b"BB"]


@dataclass(frozen=True)
class Variant:
    """One mutated instance: `data` is a whole Part 10 file; `expected` is None where unpredicted."""

    index: int
    kind: str
    sop_class_uid: str  # as in the File Meta Information: the C-STORE request's class
    sop_instance_uid: str  # likewise: the request's Affected SOP Instance UID
    data: bytes
    expected: int | None


@dataclass(frozen=True)
class _Element:
    tag: int
    header: int  # offset of the element's tag in the file
    vr: bytes
    value: int  # offset of the value
    length: int


def _uid(seed: int, *parts: object) -> str:
    return str(generate_uid(entropy_srcs=[str(seed), *map(str, parts)]))


def base_dataset(source: Path, seed: int) -> Dataset:
    """The real CT with the PHI markers and its own study/series (never a real instance's UIDs)."""
    ds = dcmread(source)
    if ds.file_meta.TransferSyntaxUID != ExplicitVRLittleEndian:
        ds.decompress()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.PatientName = PHI_NAME
    ds.PatientID = PHI_ID
    ds.StudyInstanceUID = _uid(seed, "study")
    ds.SeriesInstanceUID = _uid(seed, "series")
    return ds


def encode(ds: Dataset, sop_uid: str, meta_class: str | None = None) -> bytes:
    """`ds` as a Part 10 file (explicit VR little endian) with request UIDs in its meta."""
    ds = copy.copy(ds)
    ds.file_meta = copy.deepcopy(ds.file_meta)
    ds.file_meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    ds.file_meta.MediaStorageSOPClassUID = UID(meta_class or CT_IMAGE)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=False, implicit_vr=False, little_endian=True)
    return buf.getvalue()


def _elements(data: bytes) -> list[_Element]:
    """Top-level dataset elements of an explicit VR little endian file, with byte offsets."""
    ds = dcmread(io.BytesIO(data))
    out = []
    for tag in ds.keys():
        raw = ds.get_item(tag)  # raw, or already decoded (Specific Character Set): both know their offset
        tell = cast(int, raw.value_tell if hasattr(raw, "value_tell") else raw.file_tell)  # read from a file
        vr = str(raw.VR).encode()
        length = int.from_bytes(data[tell - 4:tell] if vr in _LONG_VRS else data[tell - 2:tell], "little")
        out.append(_Element(int(tag), tell - (12 if vr in _LONG_VRS else 8), vr, tell, length))
    return out


def _set(ds: Dataset, tag: int, vr: str, value: object) -> Dataset:
    ds = copy.deepcopy(ds)
    ds[tag] = DataElement(tag, vr, value, validation_mode=IGNORE)
    return ds


def _without(ds: Dataset, *keywords: str) -> Dataset:
    ds = copy.deepcopy(ds)
    for keyword in keywords:
        delattr(ds, keyword)
    return ds


_Build = Callable[[str], tuple[Dataset, str]]  # sop uid -> (dataset, the request's SOP class)


def _semantic(base: Dataset) -> list[tuple[str, _Build, int]]:
    """(kind, build, expected status) of the variants docs/storage.md predicts."""
    pixels = bytes(base.PixelData)

    def changed(meta_class: str = CT_IMAGE, drop: tuple[str, ...] = (), **values: object) -> _Build:
        def build(sop: str) -> tuple[Dataset, str]:
            ds = _set(base, 0x00080018, "UI", sop)
            for keyword, value in values.items():
                setattr(ds, keyword, value)
            for keyword in drop:
                delattr(ds, keyword)
            return ds, meta_class
        return build

    def raw(tag: int, vr: str, value: object) -> _Build:
        return lambda sop: (_set(changed()(sop)[0], tag, vr, value), CT_IMAGE)

    return [
        ("valid", changed(), SUCCESS),
        ("pixel:empty", changed(PixelData=b""), MALFORMED),
        ("pixel:short", changed(PixelData=pixels[: len(pixels) // 2]), MALFORMED),
        ("pixel:two-bytes", changed(PixelData=pixels[:2]), MALFORMED),
        ("pixel:trailing-padding", changed(PixelData=pixels + bytes(1024)), SUCCESS),  # readers ignore the excess
        ("pixel:missing", changed(drop=("PixelData",)), MALFORMED),
        # What a header truncation before (0028,xxxx) looks like: a CT without image attributes.
        ("pixel:missing-image-attrs-gone", changed(drop=("PixelData", "Rows", "Columns", "BitsAllocated")), MALFORMED),
        ("rows:zero", changed(Rows=0, Columns=0), MALFORMED),
        ("rows:zero-only", changed(Rows=0), MALFORMED),
        ("rows:bigger-than-pixels", changed(Rows=1024), MALFORMED),
        ("rows:vr-DS", raw(0x00280010, "DS", "512"), MALFORMED),
        ("rows:vr-SQ", raw(0x00280010, "SQ", Sequence([Dataset()])), MALFORMED),
        ("rows:two-values", raw(0x00280010, "US", [256, 256]), MALFORMED),
        ("columns:missing", changed(drop=("Columns",)), MALFORMED),
        ("bits:0", changed(BitsAllocated=0), MALFORMED),
        ("bits:7", changed(BitsAllocated=7), MALFORMED),
        ("bits:12", changed(BitsAllocated=12), MALFORMED),
        ("bits:8-for-CT", changed(BitsAllocated=8), MALFORMED),
        ("bits:32-for-CT", changed(BitsAllocated=32), MALFORMED),
        ("samples:0", changed(SamplesPerPixel=0), MALFORMED),
        ("photometric:missing", changed(drop=("PhotometricInterpretation",)), MALFORMED),
        ("frames:-3", raw(0x00280008, "IS", "-3"), MALFORMED),
        ("frames:0", raw(0x00280008, "IS", "0"), MALFORMED),
        ("frames:not-a-number", raw(0x00280008, "IS", "9"), MALFORMED),  # value patched to 'ab' in generate()
        ("frames:1", raw(0x00280008, "IS", "1"), SUCCESS),
        ("uid:sop-differs-from-request", changed(SOPInstanceUID="1.2.3.4.5.6.7.8.9"), BAD_UID),
        ("uid:sop-traversal", changed(SOPInstanceUID="../../x"), BAD_UID),
        ("uid:study-letters", changed(StudyInstanceUID="1.2.abc.4"), BAD_UID),
        ("uid:series-leading-zero", changed(SeriesInstanceUID="1.2.03.4"), BAD_UID),
        ("uid:series-too-long", changed(SeriesInstanceUID="1." + "2" * 70), BAD_UID),
        ("uid:study-empty", changed(StudyInstanceUID=""), BAD_UID),
        ("sop-class:missing", changed(drop=("SOPClassUID",)), SOP_CLASS_MISMATCH),
        ("sop-class:MR-dataset-on-CT-context", changed(SOPClassUID=MR_IMAGE), SOP_CLASS_MISMATCH),
        ("sop-class:CT-dataset-on-MR-context", changed(meta_class=MR_IMAGE), SOP_CLASS_MISMATCH),
        ("unknown-vr:Rows", raw(0x00280010, "US", 512), MALFORMED),  # VR patched to 'ZZ' in generate()
        ("valid:instance-number", changed(InstanceNumber=9999), SUCCESS),
    ]


def _mutate_length(data: bytearray, elements: list[_Element], rng: random.Random) -> str:
    # (0008,0018) SOP Instance UID first: the case the tester found (0xFFFF swallowed the patient).
    el = next(e for e in elements if e.tag == 0x00080018) if rng.random() < 0.3 else rng.choice(elements)
    long = el.vr in _LONG_VRS
    choices = [0xFFFF, 0, el.length + 1, el.length * 2 + 2, rng.randrange(1, 0x10000)]
    if long:
        choices += [0xFFFFFFFF, 0x7FFFFFFF]
    new = rng.choice(choices)
    if long:
        data[el.value - 4:el.value] = min(new, 0xFFFFFFFF).to_bytes(4, "little")
    else:
        data[el.value - 2:el.value] = min(new, 0xFFFF).to_bytes(2, "little")
    return f"length:{el.tag:08X}={new:#x}"


def _mutate_truncate_header(data: bytearray, elements: list[_Element], rng: random.Random) -> str:
    after_patient = next(e for e in elements if e.tag > 0x00100020).header
    pixel = next(e for e in elements if e.tag == 0x7FE00010).value
    cut = rng.randrange(after_patient, pixel)
    del data[cut:]
    return f"truncate-header:{cut}"


def _mutate_truncate_pixels(data: bytearray, elements: list[_Element], rng: random.Random) -> str:
    pixel = next(e for e in elements if e.tag == 0x7FE00010).value
    cut = rng.randrange(pixel, len(data))
    del data[cut:]
    return f"truncate-pixels:{cut - pixel}"


def _mutate_vr_swap(data: bytearray, elements: list[_Element], rng: random.Random) -> str:
    el = rng.choice([e for e in elements if e.vr not in _LONG_VRS])
    new = rng.choice([vr for vr in _SHORT_VRS if vr != el.vr])
    data[el.header + 4:el.header + 6] = new
    return f"vr-swap:{el.tag:08X}:{el.vr.decode()}->{new.decode()}"


def _mutate_unknown_vr(data: bytearray, elements: list[_Element], rng: random.Random) -> str:
    el = rng.choice([e for e in elements if e.vr not in _LONG_VRS])
    new = rng.choice(_UNKNOWN_VRS)
    data[el.header + 4:el.header + 6] = new
    return f"unknown-vr:{el.tag:08X}:{new.decode()}"


def _mutate_bits(data: bytearray, elements: list[_Element], rng: random.Random) -> str:
    start, end = elements[0].header, next(e for e in elements if e.tag == 0x7FE00010).value
    flips = rng.randrange(1, 9)
    for _ in range(flips):
        pos = rng.randrange(start, end)
        data[pos] ^= 1 << rng.randrange(8)
    return f"bit-flips:{flips}"


_BYTE_MUTATIONS = (_mutate_length, _mutate_truncate_header, _mutate_truncate_pixels, _mutate_vr_swap,
                   _mutate_unknown_vr, _mutate_bits)


def _patch(data: bytes, tag: int, vr: bytes | None = None, value: bytes | None = None) -> bytes:
    """Overwrite an element's VR or value bytes in place (what pydicom refuses to write)."""
    el = next(e for e in _elements(data) if e.tag == tag)
    out = bytearray(data)
    if vr is not None:
        out[el.header + 4:el.header + 6] = vr
    if value is not None:
        out[el.value:el.value + len(value)] = value
    return bytes(out)


_BYTE_PATCHES: dict[str, Callable[[bytes], bytes]] = {
    "unknown-vr:Rows": lambda d: _patch(d, 0x00280010, vr=b"ZZ"),
    "frames:not-a-number": lambda d: _patch(d, 0x00280008, value=b"ab"),
}


def generate(source: Path, n: int = 300, seed: int = 14) -> Iterator[Variant]:
    """`n` variants of `source` (semantic ones first, then byte-level), the same for the same seed."""
    with warnings.catch_warnings():  # the sender's side: pydicom's complaints about what we break
        warnings.simplefilter("ignore")
        yield from _generate(source, n, seed)


def _generate(source: Path, n: int, seed: int) -> Iterator[Variant]:
    base = base_dataset(source, seed)
    semantic = _semantic(base)
    rng = random.Random(seed)
    for i in range(n):
        sop = _uid(seed, "variant", i)
        if i < len(semantic):
            kind, build, expected = semantic[i]
            ds, meta_class = build(sop)
            data = _BYTE_PATCHES.get(kind, lambda d: d)(encode(ds, sop, meta_class))
            yield Variant(i, kind, meta_class, sop, data, expected)
        elif i % 25 == 0:  # a valid control now and then, among the broken ones
            yield Variant(i, "valid:control", CT_IMAGE, sop, encode(_set(base, 0x00080018, "UI", sop), sop), SUCCESS)
        else:
            data = bytearray(encode(_set(base, 0x00080018, "UI", sop), sop))
            mutate = _BYTE_MUTATIONS[i % len(_BYTE_MUTATIONS)]
            kind = mutate(data, _elements(bytes(data)), rng)
            yield Variant(i, kind, CT_IMAGE, sop, bytes(data), None)


def write_corpus(source: Path, out_dir: Path, n: int = 300, seed: int = 14) -> list[tuple[Variant, Path]]:
    """Write the variants as files (a C-STORE sends a file's dataset bytes as they are)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for variant in generate(source, n, seed):
        path = out_dir / f"{variant.index:04d}.dcm"
        path.write_bytes(variant.data)
        written.append((variant, path))
    return written
