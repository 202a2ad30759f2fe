"""A destination that comes back gets its whole backlog at once, not row by row as backoffs expire."""
from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select, update

from config.loader import parse_config
from dicom_node.index.db import session_scope
from dicom_node.index.models import Outbox, OutboxState, utcnow
from dicom_node.outbox.sender import OutboxSender
from tests.conftest import free_port
from tests.outbox.test_outbox_parallel import DEST, StoreSCP, make_queued

pytestmark = pytest.mark.integration


def test_first_delivery_after_an_outage_makes_the_backlog_due(tmp_path: Path, ct_dirs: list[Path]) -> None:
    factory, storage, uids = make_queued(f"sqlite:///{tmp_path / 'index.db'}", tmp_path / "storage", ct_dirs, count=4)
    port = free_port()
    cfg = parse_config({"node": {"storage_dir": str(storage)},
                        "peers": {DEST: {"ae_title": DEST, "host": "127.0.0.1", "port": port}},
                        "send": {"associations_per_destination": 1, "backoff_initial_s": 600}},
                       base_dir=tmp_path, environ={})
    sender = OutboxSender(cfg, factory, storage, connect_timeout_s=2)
    scp = StoreSCP(port, tmp_path / "received")
    scp.out.mkdir()
    try:
        assert sender.drain(DEST) == 0  # down: every row waits 600 s
        with factory() as s:
            rows = list(s.scalars(select(Outbox).order_by(Outbox.id)))
        assert all(r.attempts == 1 and r.state == OutboxState.pending for r in rows)
        with session_scope(factory) as s:  # one row's backoff runs out first
            s.execute(update(Outbox).where(Outbox.id == rows[0].id).values(next_attempt_at=utcnow()))
        scp.start()
        assert sender.drain(DEST) == 4  # that row goes, and with it the rest, without waiting 600 s
        assert set(scp.received()) == uids
    finally:
        scp.kill()
        factory.kw["bind"].dispose()
