"""Receive-time validation (docs/storage.md, "Bad input"), over real DIMSE: each case its status,
one WARNING line per refusal, nothing of a refused instance on disk or in the index; stale
temporary files removed at start; pydicom's warnings never carry the received values."""
from __future__ import annotations

import copy
import io
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.config import IGNORE
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid
from pynetdicom import AE, _config
from sqlalchemy import select

from dicom_node.index.models import Instance
from dicom_node.storage import STALE_TEMP_AGE_S, remove_stale_temp_files
from tests.dicom_node.conftest import node_config

pytestmark = pytest.mark.integration
CT, MR = "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.4"
NAME, PID = "VALID^PHIMARKER", "PHIID67890"


@pytest.fixture
def base(shared_dir: Path) -> Dataset:
    path = sorted((shared_dir / "data" / "ct" / "lung-pet-ct-dx_Lung_Dx-A0002_chest").glob("*.dcm"))[0]
    ds = dcmread(path)
    ds.PatientName, ds.PatientID = NAME, PID
    return ds


def _variant(base: Dataset, *, drop: tuple[str, ...] = (), raw: dict[int, tuple[str, object]] | None = None,
             **values: object) -> Dataset:
    ds = copy.deepcopy(base)
    ds.SOPInstanceUID = generate_uid()
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    for keyword in drop:
        delattr(ds, keyword)
    for tag, (vr, value) in (raw or {}).items():
        ds[tag] = DataElement(tag, vr, value, validation_mode=IGNORE)
    return ds


def _part10(ds: Dataset, meta_class: str | None = None, patch: tuple[int, int, bytes] | None = None) -> bytes:
    """`ds` as explicit VR LE Part 10 bytes, meta naming `meta_class`; `patch` = (tag, offset from the
    element's tag, bytes) overwrites what pydicom would refuse to write (an unknown VR)."""
    ds = copy.copy(ds)
    ds.file_meta = copy.deepcopy(ds.file_meta)
    ds.file_meta.MediaStorageSOPClassUID = meta_class or ds.get("SOPClassUID", CT)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=False, implicit_vr=False, little_endian=True)
    data = bytearray(buf.getvalue())
    if patch is not None:
        tag, at, new = patch
        start = dcmread(io.BytesIO(bytes(data))).get_item(tag).value_tell - 8
        data[start + at:start + at + len(new)] = new
    return bytes(data)


def _send_files(port: int, files: list[Path], monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """C-STORE each file's dataset bytes as they are, on contexts named by its File Meta."""
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    ae = AE(ae_title="PACS")
    for sop_class in (CT, MR):
        ae.add_requested_context(sop_class, "1.2.840.10008.1.2.1")
    assoc = ae.associate("127.0.0.1", port, ae_title="SRNODE")
    assert assoc.is_established
    try:
        return [int(assoc.send_c_store(f).Status) for f in files]
    finally:
        assoc.release()


def _cases(base: Dataset) -> list[tuple[str, bytes, int]]:
    pixels = bytes(base.PixelData)
    no_pixels_no_image_attrs = _variant(base, drop=("PixelData", "Rows", "Columns", "BitsAllocated"))
    return [
        ("valid", _part10(_variant(base)), 0x0000),
        ("empty pixel data", _part10(_variant(base, PixelData=b"")), 0xC002),
        ("pixel data with trailing padding", _part10(_variant(base, PixelData=pixels + bytes(64))), 0x0000),
        ("Rows=Columns=0", _part10(_variant(base, Rows=0, Columns=0)), 0xC002),
        ("BitsAllocated=0", _part10(_variant(base, BitsAllocated=0)), 0xC002),
        ("BitsAllocated=8 on CT", _part10(_variant(base, BitsAllocated=8)), 0xC002),
        ("NumberOfFrames=-3", _part10(_variant(base, raw={0x00280008: ("IS", "-3")})), 0xC002),
        ("NumberOfFrames=1", _part10(_variant(base, raw={0x00280008: ("IS", "1")})), 0x0000),
        ("Rows with VR DS", _part10(_variant(base, raw={0x00280010: ("DS", "512")})), 0xC002),
        ("Rows with VR SQ", _part10(_variant(base, raw={0x00280010: ("SQ", Sequence([Dataset()]))})), 0xC002),
        ("no SOPClassUID", _part10(_variant(base, drop=("SOPClassUID",)), meta_class=CT), 0xA900),
        ("CT dataset on an MR context", _part10(_variant(base), meta_class=MR), 0xA900),
        # A header cut before (0028,xxxx): a CT that would have been indexed as a non-image.
        ("CT without pixel data or image attributes", _part10(no_pixels_no_image_attrs), 0xC002),
        ("unknown VR", _part10(_variant(base), patch=(0x00280010, 4, b"ZZ")), 0xC002),
    ]


def test_each_case_gets_its_documented_status(tmp_path: Path, sqlite_url: str, start_node, base: Dataset,
                                              caplog: pytest.LogCaptureFixture,
                                              monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.INFO)
    node = start_node(node_config(tmp_path, sqlite_url))
    cases = _cases(base)
    files = []
    for i, (_, data, _) in enumerate(cases):
        files.append(tmp_path / f"{i:02d}.dcm")
        files[-1].write_bytes(data)
    statuses = _send_files(node.port, files, monkeypatch)
    got = {name: f"0x{status:04X}" for (name, _, _), status in zip(cases, statuses)}
    assert got == {name: f"0x{expected:04X}" for name, _, expected in cases}
    refused = [dcmread(f, stop_before_pixels=True).file_meta.MediaStorageSOPInstanceUID
               for f, (_, _, expected) in zip(files, cases) if expected]
    accepted = [dcmread(f, stop_before_pixels=True).file_meta.MediaStorageSOPInstanceUID
                for f, (_, _, expected) in zip(files, cases) if not expected]
    with node.session_factory() as s:
        rows = {r.sop_instance_uid: r for r in s.scalars(select(Instance))}
    assert set(rows) == set(accepted)
    assert all(r.is_image and r.rows == 512 and r.sop_class_uid == CT for r in rows.values())
    assert not [uid for uid in refused if list(node.storage_dir.rglob(f"{uid}.dcm"))]
    lines = [r for r in caplog.records if r.levelno >= logging.WARNING and r.thread != _main_thread()]
    assert len(lines) == len(refused) and all(r.name == "dicom_node.store" for r in lines), \
        [r.getMessage() for r in lines]
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "PHIMARKER" not in text and PID not in text


def _main_thread() -> int | None:
    import threading

    return threading.main_thread().ident


def test_unknown_vr_is_one_warning_not_an_error(tmp_path: Path, sqlite_url: str, start_node, base: Dataset,
                                                caplog: pytest.LogCaptureFixture,
                                                monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.DEBUG)
    node = start_node(node_config(tmp_path, sqlite_url))
    path = tmp_path / "unknown-vr.dcm"
    # An element the index reads (SeriesDescription) whose VR is unknown: it used to fail at indexing.
    path.write_bytes(_part10(_variant(base), patch=(0x0008103E, 4, b"QQ")))
    assert _send_files(node.port, [path], monkeypatch) == [0xC002]
    node_lines = [r for r in caplog.records if r.levelno >= logging.WARNING and r.thread != _main_thread()]
    assert [(r.name, r.levelname) for r in node_lines] == [("dicom_node.store", "WARNING")]
    assert "unknown VR 'QQ' in (0008,103E)" in node_lines[0].getMessage()
    assert not any(r.exc_info for r in caplog.records)


def test_warnings_while_parsing_carry_no_values(tmp_path: Path, base: Dataset) -> None:
    """pydicom's warnings.warn output (not only its logging) stays out of stderr: the 0xFFFF length
    field of the issue makes the SOP Instance UID swallow the patient's name and ID."""
    data = bytearray(_part10(_variant(base)))
    at = dcmread(io.BytesIO(bytes(data))).get_item(0x00080018).value_tell
    data[at - 2:at] = b"\xff\xff"
    sample = tmp_path / "ffff.dcm"
    sample.write_bytes(bytes(data))
    # A fresh interpreter, as `srnode serve`: the bytes it writes are what counts. The parse runs
    # in a thread, as an association's does.
    script = (
        "import logging, sys, threading\n"
        "logging.basicConfig(level=logging.DEBUG)\n"
        "from dicom_node.ingest import RejectedInstance, parse_header\n"
        "def run():\n"
        "    try:\n"
        f"        parse_header(open({str(sample)!r}, 'rb').read(), {CT!r})\n"
        "    except RejectedInstance as exc:\n"
        "        print(f'status 0x{exc.status:04X}')\n"
        "t = threading.Thread(target=run); t.start(); t.join()\n"
    )
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == b"status 0xC002"  # the swallowed pixel data: missing for a CT
    for marker in (b"PHIMARKER", PID.encode(), b"PHIID"):
        assert marker not in r.stdout + r.stderr
    assert b"UserWarning" not in r.stderr


def _crashed_write(storage: Path) -> Path:
    """A process that dies (os._exit) in the middle of atomic_write: its temp file stays behind."""
    script = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "from dicom_node.storage import atomic_write\n"
        "def chunks():\n"
        "    yield b'x' * 1000\n"
        "    os._exit(9)\n"
        f"atomic_write(Path({str(storage)!r}) / '1.2' / '1.2.3' / '1.2.3.4.dcm', chunks())\n"
    )
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert r.returncode == 9, r.stderr[-2000:]
    (left,) = (storage / "1.2" / "1.2.3").glob(".tmp-*.part")
    return left


def test_stale_temp_files_removed_at_start_and_nothing_else(tmp_path: Path) -> None:
    storage = tmp_path / "storage"
    crashed = _crashed_write(storage)
    series = crashed.parent
    host, pid, _ = crashed.name[len(".tmp-"):-len(".part")].rsplit("-", 2)
    assert pid.isdigit() and int(pid) != os.getpid()  # named by its writer: host and pid
    instance = series / "1.2.3.5.dcm"
    instance.write_bytes(b"stored")
    old_instance = series / "1.2.3.6.dcm"
    old_instance.write_bytes(b"stored long ago")
    with subprocess.Popen(["sleep", "30"]) as live:
        # A live writer of this host, another host's fresh file, an unnamed old-style fresh file: kept.
        live_tmp = series / f".tmp-{host}-{live.pid}-abcdefgh.part"
        other_host = series / ".tmp-otherhost-12345-abcdefgh.part"
        fresh_unnamed = series / ".tmp-abcdefgh.part"
        old_unnamed = series / ".tmp-ijklmnop.part"
        for p in (live_tmp, other_host, fresh_unnamed, old_unnamed):
            p.write_bytes(b"partial")
        long_ago = time.time() - STALE_TEMP_AGE_S - 60
        os.utime(old_unnamed, (long_ago, long_ago))
        os.utime(old_instance, (long_ago, long_ago))
        assert remove_stale_temp_files(storage) == 2
        live.kill()
    assert not crashed.exists() and not old_unnamed.exists()
    assert all(p.exists() for p in (live_tmp, other_host, fresh_unnamed, instance, old_instance))
