"""Bad input: truncated/malformed datasets, missing/short pixel data, path-traversal UIDs,
conflicting duplicates, non-image objects. Each refusal: a failure status and one log line."""
from __future__ import annotations

import copy
import logging
import threading
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid
from pynetdicom import AE, _config
from pynetdicom.sop_class import CTImageStorage
from sqlalchemy import func, select

from dicom_node.index.models import Instance, Series
from dicom_node.storage_identity import STORAGE_MARKER
from tests.dicom_node.conftest import node_config, storescu

pytestmark = pytest.mark.integration


def _store_logs(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "dicom_node.store" and r.levelno >= logging.WARNING]


def _send_datasets(port: int, datasets: list, ts: str = "1.2.840.10008.1.2.1") -> list[int]:  # type: ignore[type-arg]
    ae = AE(ae_title="PACS")
    for ds in datasets:
        ae.add_requested_context(ds.SOPClassUID, ts)
    assoc = ae.associate("127.0.0.1", port, ae_title="SRNODE")
    assert assoc.is_established
    try:
        return [int(assoc.send_c_store(ds).Status) for ds in datasets]
    finally:
        assoc.release()


def _ct(shared_dir: Path) -> Path:
    return sorted((shared_dir / "data" / "ct" / "lung-pet-ct-dx_Lung_Dx-A0002_chest").glob("*.dcm"))[0]


def test_truncated_file_fails_while_parallel_sender_lands(tmp_path: Path, database_url: str, start_node,
                                                          shared_dir: Path, ct_dirs, caplog, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.INFO)
    node = start_node(node_config(tmp_path, database_url))
    source = _ct(shared_dir)
    data = source.read_bytes()
    truncated = tmp_path / "truncated.dcm"
    ds = dcmread(source)
    ds.SOPInstanceUID = generate_uid()
    ds.save_as(truncated, enforce_file_format=True)
    truncated.write_bytes(truncated.read_bytes()[: len(data) // 2])

    parallel: dict[str, object] = {}
    sender = threading.Thread(
        target=lambda: parallel.setdefault("r", storescu(node.port, ct_dirs, flags=("+sd", "+r"))))
    sender.start()
    # pynetdicom sends the file's dataset bytes as they are (no decoding on the sending side)
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    ae = AE(ae_title="OTHER")
    ae.add_requested_context(CTImageStorage, "1.2.840.10008.1.2.1")
    assoc = ae.associate("127.0.0.1", node.port, ae_title="SRNODE")
    status = assoc.send_c_store(truncated)
    assoc.release()
    sender.join(120)
    assert status.Status == 0xC002  # MalformedDataset
    result = parallel["r"]
    assert result.returncode == 0, result.stderr[-1500:]  # type: ignore[attr-defined]
    n_ct = sum(1 for d in ct_dirs for _ in d.glob("*.dcm"))
    with node.session_factory() as s:
        assert s.scalar(select(func.count(Instance.id))) == n_ct
        assert s.scalar(select(Instance).where(Instance.sop_instance_uid == ds.SOPInstanceUID)) is None
    assert not list(node.storage_dir.rglob(f"{ds.SOPInstanceUID}.dcm"))
    assert not list(node.storage_dir.rglob("*.part"))
    refusals = _store_logs(caplog)
    assert len(refusals) == 1 and "truncated" in refusals[0].getMessage()


def test_malformed_pixel_data_and_bad_uids_refused(tmp_path: Path, sqlite_url: str, start_node, shared_dir: Path,
                                                   caplog) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.INFO)
    node = start_node(node_config(tmp_path, sqlite_url))
    base = dcmread(_ct(shared_dir))

    def variant(**changes: object):  # type: ignore[no-untyped-def]
        ds = copy.deepcopy(base)
        ds.SOPInstanceUID = generate_uid()
        for key, value in changes.items():
            if value is None:
                delattr(ds, key)
            else:
                setattr(ds, key, value)
        return ds

    short = variant(PixelData=base.PixelData[:1000])
    missing = variant(PixelData=None)
    traversal_study = variant(StudyInstanceUID="../../x")
    traversal_series = variant(SeriesInstanceUID="1.2/../../../../etc")
    ok = variant()
    statuses = _send_datasets(node.port, [short, missing, traversal_study, traversal_series, ok])
    assert statuses == [0xC002, 0xC002, 0xC003, 0xC003, 0x0000]
    refusals = [r.getMessage() for r in _store_logs(caplog)]
    assert len(refusals) == 4, refusals
    node_side = [r for r in caplog.records
                 if r.name.startswith("pydicom") and r.thread != threading.main_thread().ident]
    assert node_side == [], "the node logs one line per refusal, pydicom adds none"
    assert "short pixel data" in refusals[0] and "missing pixel data" in refusals[1]
    assert "StudyInstanceUID" in refusals[2] and "SeriesInstanceUID" in refusals[3]
    # nothing written outside storage_dir, nothing but the good instance inside it
    assert not (tmp_path / "x").exists() and not (tmp_path.parent / "x").exists()
    files = [p for p in node.storage_dir.rglob("*") if p.is_file() and p.name != STORAGE_MARKER]
    assert [p.name for p in files] == [f"{ok.SOPInstanceUID}.dcm"]
    with node.session_factory() as s:
        assert s.scalar(select(func.count(Instance.id))) == 1


def test_path_traversal_sop_instance_uid_refused(tmp_path: Path, sqlite_url: str, start_node, shared_dir: Path,
                                                 caplog) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.INFO)
    node = start_node(node_config(tmp_path, sqlite_url))
    ds = dcmread(_ct(shared_dir))
    ds.SOPInstanceUID = "../../evil"
    ae = AE(ae_title="PACS")
    ae.add_requested_context(ds.SOPClassUID, "1.2.840.10008.1.2.1")
    assoc = ae.associate("127.0.0.1", node.port, ae_title="SRNODE")
    try:
        status = assoc.send_c_store(ds)
    finally:
        assoc.release()
    assert status.Status == 0xC003
    assert not list(tmp_path.rglob("evil*"))
    assert len(_store_logs(caplog)) == 1


def test_conflicting_duplicate_refused_and_same_series_duplicate_replaces(tmp_path: Path, database_url: str, start_node,
                                                                          shared_dir: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.INFO)
    node = start_node(node_config(tmp_path, database_url))
    ds = dcmread(_ct(shared_dir))
    moved = copy.deepcopy(ds)
    moved.SeriesInstanceUID = generate_uid()
    changed = copy.deepcopy(ds)
    changed.SeriesDescription = "corrected"
    assert _send_datasets(node.port, [ds, moved, changed]) == [0x0000, 0xC001, 0x0000]
    with node.session_factory() as s:
        rows = s.scalars(select(Instance)).all()
        assert len(rows) == 1
    stored = dcmread(node.storage_dir / rows[0].file_path)
    assert stored.SeriesDescription == "corrected"  # last write wins
    assert len(_store_logs(caplog)) == 1


def test_non_image_objects_stored_not_handed_over(tmp_path: Path, database_url: str, start_node) -> None:  # type: ignore[no-untyped-def]
    handed: list[int] = []
    node = start_node(node_config(tmp_path, database_url), stable_hooks=[handed.append])
    files = [Path(get_testdata_file(n)) for n in ("test-SR.dcm", "rtstruct.dcm", "rtplan.dcm")]
    result = storescu(node.port, files)
    assert result.returncode == 0, result.stderr[-1500:]
    with node.session_factory() as s:
        rows = s.scalars(select(Instance)).all()
        assert len(rows) == 3 and not any(r.is_image for r in rows)
    node.assembler.stop()
    node.assembler.stable_after_s = 0
    node.assembler.run_once()
    with node.session_factory() as s:
        assert {sr.state.value for sr in s.scalars(select(Series))} == {"stable"}
    assert handed == []
