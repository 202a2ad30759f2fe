"""The storage's identity: which storage directory belongs to which index.

The node writes `<storage_dir>/.srnode-storage-id` at start (a UUID also kept in the index's
`node_setting` table); a worker on another host compares what its `node.storage_dir` holds with
the index before it takes work (`workers/health.py`): a folder that is not mounted, or another
node's storage, would fail every job fast and win the queue from healthy workers.
"""
from __future__ import annotations

import logging
import uuid
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from dicom_node.index.db import session_scope
from dicom_node.index.models import NodeSetting
from dicom_node.storage import atomic_write

log = logging.getLogger(__name__)

STORAGE_MARKER = ".srnode-storage-id"
STORAGE_ID_KEY = "storage_id"


def write_storage_marker(storage_dir: Path, factory: sessionmaker[Session]) -> str:
    """The node at start: make `<storage_dir>/.srnode-storage-id` say the index's storage id
    (created on first start, reusing a marker already there). Returns the id."""
    storage_dir.mkdir(parents=True, exist_ok=True)
    marker = storage_dir / STORAGE_MARKER
    try:
        on_disk = marker.read_text(encoding="ascii").strip()
    except (FileNotFoundError, UnicodeDecodeError):
        on_disk = ""
    with session_scope(factory) as session:
        row = session.get(NodeSetting, STORAGE_ID_KEY)
        if row is None:
            row = NodeSetting(key=STORAGE_ID_KEY, value=on_disk or str(uuid.uuid4()))
            session.add(row)
        storage_id = row.value
    if on_disk != storage_id:
        if on_disk:  # a storage folder used with another index before: this index's id wins
            log.warning("%s said %s…; rewritten with this index's storage id", marker, on_disk[:8])
        atomic_write(marker, f"{storage_id}\n".encode("ascii"))
    return storage_id


def storage_problem(storage_dir: Path, factory: sessionmaker[Session]) -> str:
    """"" when `storage_dir` is the node's storage (its marker matches the index) and writable."""
    with factory() as session:
        expected = session.get(NodeSetting, STORAGE_ID_KEY)
    if expected is None:
        return "the node has not marked its storage yet (start `srnode serve` on this index first)"
    marker = storage_dir / STORAGE_MARKER
    try:
        found = marker.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        return f"{marker} is missing: node.storage_dir is not the node's shared storage here (not mounted?)"
    except (OSError, UnicodeDecodeError) as exc:
        return f"cannot read {marker}: {exc}"
    if found != expected.value:
        return (f"{marker} names storage {found[:8]}…, the index {expected.value[:8]}…: node.storage_dir is "
                "another storage than the node's (another node's, or a copy)")
    probe = storage_dir / f".srnode-probe-{uuid.uuid4().hex}"
    try:
        atomic_write(probe, b"probe\n")
        probe.unlink()
    except OSError as exc:
        return f"cannot write in {storage_dir}: {exc.strerror or exc}"
    return ""
