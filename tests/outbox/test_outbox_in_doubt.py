"""In-doubt deliveries: a C-STORE whose response never arrived (crash, broken association).

A peer that answers C-FIND (a real Orthanc) is asked first and the instances it has are not sent
again; a peer without C-FIND (DCMTK storescp) gets them again, with one warning line.
"""
from __future__ import annotations

import logging
from pathlib import Path

import pytest
from pydicom import dcmread
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from config.loader import parse_config
from dicom_node.index.db import session_scope
from dicom_node.index.models import Instance, Outbox, OutboxState, utcnow
from dicom_node.outbox.sender import OutboxSender
from tests.conftest import free_port
from tests.orthanc import Orthanc
from tests.outbox.test_outbox_parallel import StoreSCP, make_queued

pytestmark = pytest.mark.integration

PACS = "PACS"


def _sender(factory: sessionmaker[Session], storage: Path, port: int, ae_title: str) -> OutboxSender:
    cfg = parse_config({"node": {"storage_dir": str(storage)},
                        "peers": {PACS: {"ae_title": ae_title, "host": "127.0.0.1", "port": port}},
                        "send": {"associations_per_destination": 1}},  # one drain() sends every row
                       base_dir=storage.parent, environ={})
    return OutboxSender(cfg, factory, storage)


def _interrupt(factory: sessionmaker[Session]) -> None:
    # What a crash between the C-STOREs and the delivered mark leaves: rows handed, not answered.
    with session_scope(factory) as s:
        s.execute(update(Outbox).values(sent_at=utcnow()))


def _files(factory: sessionmaker[Session], storage: Path) -> list[Path]:
    with factory() as s:
        return [storage / p for p in s.scalars(select(Instance.file_path).order_by(Instance.id))]


def _states(factory: sessionmaker[Session]) -> list[OutboxState]:
    with factory() as s:
        return list(s.scalars(select(Outbox.state).order_by(Outbox.id)))


def test_instances_the_peer_has_are_confirmed_by_c_find_not_sent_again(
        tmp_path: Path, ct_dirs: list[Path], caplog: pytest.LogCaptureFixture) -> None:
    factory, storage, _ = make_queued(f"sqlite:///{tmp_path / 'index.db'}", tmp_path / "storage", ct_dirs,
                                      count=4, dest=PACS)
    orthanc = Orthanc(tmp_path / "orthanc", {})
    try:
        files = _files(factory, storage)
        # The peer got the first two before the node died; marked so that a re-send would show
        # (OverwriteInstances is on: a second C-STORE would replace the description).
        for f in files[:2]:
            ds = dcmread(f)
            ds.SeriesDescription = "STORED BEFORE THE CRASH"
            kept = tmp_path / f.name
            ds.save_as(kept)
            orthanc.upload([kept])
        _interrupt(factory)
        sender = _sender(factory, storage, orthanc.dicom_port, orthanc.aet)
        with caplog.at_level(logging.INFO, logger="dicom_node.outbox.sender"):
            assert sender.drain(PACS) == 4
        assert _states(factory) == [OutboxState.delivered] * 4
        descriptions = sorted(orthanc.get(f"/instances/{i}/simplified-tags").get("SeriesDescription", "")
                              for i in orthanc.get("/instances"))
        assert len(descriptions) == 4
        assert descriptions.count("STORED BEFORE THE CRASH") == 2  # the confirmed two were not sent again
        assert "2 of 4 instance(s) whose delivery to PACS was interrupted are there (C-FIND)" in caplog.text
    finally:
        orthanc.stop()
        factory.kw["bind"].dispose()


def test_a_peer_without_c_find_gets_in_doubt_instances_again_with_one_warning(
        tmp_path: Path, ct_dirs: list[Path], caplog: pytest.LogCaptureFixture) -> None:
    factory, storage, uids = make_queued(f"sqlite:///{tmp_path / 'index.db'}", tmp_path / "storage", ct_dirs,
                                         count=3, dest=PACS)
    scp = StoreSCP(free_port(), tmp_path / "received")
    scp.out.mkdir()
    scp.start()
    try:
        _interrupt(factory)
        sender = _sender(factory, storage, scp.port, "DEST")
        with caplog.at_level(logging.INFO, logger="dicom_node.outbox.sender"):
            assert sender.drain(PACS) == 3
        assert _states(factory) == [OutboxState.delivered] * 3
        assert set(scp.received()) == uids
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert [r.getMessage() for r in warnings] == [
            "outbox: 3 instance(s) not confirmable (the peer gave no C-FIND answer) whose delivery to PACS "
            "was interrupted: sent again (at least once)"]
    finally:
        scp.kill()
        factory.kw["bind"].dispose()


def test_rows_never_sent_are_not_left_in_doubt(tmp_path: Path, ct_dirs: list[Path]) -> None:
    factory, storage, _ = make_queued(f"sqlite:///{tmp_path / 'index.db'}", tmp_path / "storage", ct_dirs,
                                      count=3, dest=PACS)
    scp = StoreSCP(free_port(), tmp_path / "received")
    scp.out.mkdir()
    scp.start()
    try:
        assert _sender(factory, storage, scp.port, "DEST").drain(PACS) == 3
        with factory() as s:
            rows = list(s.scalars(select(Outbox)))
        # Delivered rows keep when they were handed over; nothing pending is in doubt.
        assert all(r.state == OutboxState.delivered and r.sent_at is not None for r in rows)
    finally:
        scp.kill()
        factory.kw["bind"].dispose()
