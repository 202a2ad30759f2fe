"""UID validation, UID-safe paths and atomic writes (dicom_node.storage)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from dicom_node.storage import (
    InvalidUID,
    StorageError,
    atomic_write,
    instance_rel_path,
    is_valid_uid,
    read_instance_bytes,
    resolve_in,
    validate_uid,
    write_instance,
)


@pytest.mark.parametrize("uid", ["1.2.840.10008.1.2", "0", "1.0.3", "2.25." + "9" * 59])
def test_valid_uids(uid: str) -> None:
    assert is_valid_uid(uid)
    assert validate_uid(uid) == uid


@pytest.mark.parametrize(
    "uid",
    ["", "../../x", "1.2/3", "1..2", ".1.2", "1.2.", "1.02.3", "01.2", "1.2.a", "1.2.3 4", "1." + "1" * 63,
     "1.2\x003", "/etc/passwd", "..", "1.2.3\\4", None, 12],
)
def test_invalid_uids(uid: object) -> None:
    assert not is_valid_uid(uid)
    with pytest.raises(InvalidUID):
        validate_uid(uid, "SOPInstanceUID")


def test_padding_is_stripped() -> None:
    assert validate_uid("1.2.3\x00") == "1.2.3"


def test_rel_path_layout() -> None:
    assert str(instance_rel_path("1.2", "1.2.3", "1.2.3.4")) == "1.2/1.2.3/1.2.3.4.dcm"
    with pytest.raises(InvalidUID, match="StudyInstanceUID"):
        instance_rel_path("../..", "1.2.3", "1.2.3.4")


@pytest.mark.parametrize("rel", ["../x.dcm", "/etc/passwd", "a/../../x", "1.2/../../x"])
def test_resolve_refuses_escapes(tmp_path: Path, rel: str) -> None:
    with pytest.raises(StorageError):
        resolve_in(tmp_path / "storage", rel)


def test_atomic_write_and_read_back(tmp_path: Path) -> None:
    root = tmp_path / "storage"
    rel = instance_rel_path("1.2", "1.2.3", "1.2.3.4")
    assert write_instance(root, rel, b"abc") == 3
    assert write_instance(root, rel, [b"de", b"fgh"]) == 5  # replace: last write wins
    assert read_instance_bytes(root, rel) == b"defgh"
    # no temporary files are left next to the result
    assert os.listdir(root / "1.2" / "1.2.3") == ["1.2.3.4.dcm"]


def test_failed_write_leaves_nothing(tmp_path: Path) -> None:
    def chunks():  # type: ignore[no-untyped-def]
        yield b"partial"
        raise RuntimeError("sender went away")

    target = tmp_path / "d" / "f.dcm"
    with pytest.raises(RuntimeError):
        atomic_write(target, chunks())
    assert not target.exists()
    assert os.listdir(tmp_path / "d") == []


def _failing_fsync(fd: int) -> None:
    raise OSError(5, "Input/output error")


def test_failed_fsync_of_new_file_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A new file is renamed into place before its fsync: a failed fsync must remove it again.
    target = tmp_path / "d" / "f.dcm"
    target.parent.mkdir()
    monkeypatch.setattr(os, "fsync", _failing_fsync)
    with pytest.raises(OSError):
        atomic_write(target, b"abc")
    assert os.listdir(tmp_path / "d") == []


def test_failed_fsync_of_replacement_keeps_old_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A duplicate replaces an acknowledged file only once its own bytes are on disk.
    target = tmp_path / "d" / "f.dcm"
    atomic_write(target, b"old")
    monkeypatch.setattr(os, "fsync", _failing_fsync)
    with pytest.raises(OSError):
        atomic_write(target, b"new")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path / "d") == ["f.dcm"]

