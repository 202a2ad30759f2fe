"""Outbox with several associations to one destination: every row delivered exactly once.

Real parts: the node's OutboxSender, a SQLite index, real CT slices, DCMTK storescp (`--fork`, one
file per received instance, `--unique-filenames` so a second copy of an instance shows up).
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from pydicom.uid import generate_uid
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from config.loader import parse_config
from dicom_node.index.db import make_engine, session_factory, session_scope
from dicom_node.index.migrate import upgrade
from dicom_node.index.models import Outbox, OutboxState
from dicom_node.ingest import store_datasets
from dicom_node.outbox.queue import due_items, enqueue, mark_delivered_many
from dicom_node.outbox.sender import OutboxSender
from tests.conftest import REPO_ROOT, free_port
from tests.dicom_node.conftest import pg_url  # noqa: F401 - fixture
from tests.faults.harness import wait_until

DEST = "DEST"
LANES = 3


def make_queued(url: str, storage: Path, ct_dirs: list[Path], count: int = 60,
                dest: str = DEST) -> tuple[sessionmaker[Session], Path, set[str]]:
    """An index + storage with `count` real CT slices (fresh UIDs), each queued once to `dest`."""
    engine = make_engine(url)
    upgrade(url, engine)
    factory = session_factory(engine)
    study, series = generate_uid(), generate_uid()
    datasets = []
    for source in [f for d in ct_dirs for f in sorted(d.glob("*.dcm"))][:count]:
        ds = dcmread(source)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        datasets.append(ds)
    store_datasets(factory, storage, datasets, "TEST",
                   also=lambda s, r: enqueue(s, [x.instance_pk for x in r], [dest]))
    return factory, storage, {str(ds.SOPInstanceUID) for ds in datasets}


@pytest.fixture
def queued(tmp_path: Path, ct_dirs: list[Path]) -> tuple[sessionmaker[Session], Path, set[str]]:
    return make_queued(f"sqlite:///{tmp_path / 'index.db'}", tmp_path / "storage", ct_dirs)


class StoreSCP:
    """DCMTK storescp in its own process group (so --fork children die with it)."""

    def __init__(self, port: int, out: Path) -> None:
        self.port, self.out = port, out
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["storescp", "--aetitle", DEST, "--fork", "--unique-filenames", "--output-directory", str(self.out),
             str(self.port)], env={**os.environ, "TCP_NODELAY": "1"}, start_new_session=True,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: subprocess.run(["echoscu", "-aec", DEST, "127.0.0.1", str(self.port)],
                                          capture_output=True).returncode == 0, 20, "storescp")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def received(self) -> Counter[str]:
        """SOP Instance UIDs of the files received, with how often each came."""
        uids: Counter[str] = Counter()
        for path in self.out.iterdir():
            try:
                uids[str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)] += 1
            except (InvalidDicomError, OSError, EOFError, AttributeError):
                continue  # a file cut off by the kill: that instance was never acknowledged
        return uids


def _rows(factory: sessionmaker[Session]) -> list[Outbox]:
    with factory() as s:
        return list(s.scalars(select(Outbox)))


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_lanes_partition_the_due_rows(backend: str, tmp_path: Path, ct_dirs: list[Path],
                                      request: pytest.FixtureRequest) -> None:
    url = f"sqlite:///{tmp_path / 'index.db'}" if backend == "sqlite" else request.getfixturevalue("pg_url")
    factory = make_queued(url, tmp_path / "storage", ct_dirs)[0]
    with factory() as s:
        everything = {i.outbox_id for i in due_items(s, DEST, 1000)}
        lanes = [{i.outbox_id for i in due_items(s, DEST, 1000, lane=k, lanes=LANES)} for k in range(LANES)]
    assert all(lanes) and set().union(*lanes) == everything and sum(map(len, lanes)) == len(everything)
    # Marking one lane delivered (one UPDATE) leaves exactly the other lanes due.
    with session_scope(factory) as s:
        mark_delivered_many(s, sorted(lanes[0]))
    with factory() as s:
        assert {i.outbox_id for i in due_items(s, DEST, 1000)} == everything - lanes[0]
        done = [r for r in s.scalars(select(Outbox)) if r.id in lanes[0]]
    assert all(r.state == OutboxState.delivered and r.attempts == 1 and r.delivered_at for r in done)
    factory.kw["bind"].dispose()


def test_parallel_associations_deliver_each_row_once_across_an_outage(
        tmp_path: Path, queued: tuple[sessionmaker[Session], Path, set[str]],
        caplog: pytest.LogCaptureFixture) -> None:
    factory, storage, uids = queued
    out = tmp_path / "received"
    out.mkdir()
    scp = StoreSCP(free_port(), out)
    cfg = parse_config({"peers": {DEST: {"ae_title": DEST, "host": "127.0.0.1", "port": scp.port}},
                        "send": {"associations_per_destination": LANES, "backoff_initial_s": 0.5,
                                 "backoff_max_s": 1}}, environ={})
    sender = OutboxSender(cfg, factory, storage, poll_s=0.1, batch=8)
    caplog.set_level(logging.WARNING, logger="dicom_node.outbox.sender")
    scp.start()
    try:
        sender.start()
        wait_until(lambda: any(out.iterdir()), 30, "the first instance", every_s=0.002)
        scp.kill()  # mid-way: the destination goes down while the associations are sending
        assert len(list(out.iterdir())) < len(uids), "everything arrived before the outage: nothing tested"
        wait_until(lambda: any("cannot associate" in r.last_error for r in _rows(factory)), 30,
                   "an attempt while the destination is down")
        scp.start()
        wait_until(lambda: all(r.state == OutboxState.delivered for r in _rows(factory)), 60, "every row delivered")
    finally:
        sender.stop()
        scp.kill()
    received = scp.received()
    assert set(received) == uids
    # Only an instance that was in flight when the peer died (C-STORE sent, no response) may come
    # twice; each association has at most one in flight, and each such failure was logged.
    in_flight = {uid for uid in uids for r in caplog.records
                 if uid in r.getMessage() and "cannot associate" not in r.getMessage()}
    twice = {uid for uid, n in received.items() if n > 1}
    assert twice <= in_flight and len(in_flight) <= LANES, (twice, in_flight)
    assert all(n <= 2 for n in received.values())
    # The associations that find the destination down in one pass log one line between them.
    down = [r.created for r in caplog.records if "cannot associate" in r.getMessage()]
    assert down and all(b - a >= 0.9 for a, b in zip(down, down[1:])), down


def test_bench_outbox_quick_smoke_run(tmp_path: Path) -> None:
    """bench/outbox/bench_outbox.py --quick runs end to end and writes its JSON (CI smoke run)."""
    done = subprocess.run([sys.executable, str(REPO_ROOT / "bench" / "outbox" / "bench_outbox.py"), "--quick",
                           "--size", "1024", "--out", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "| 2 |" in done.stdout and (tmp_path / "outbox_rate.json").is_file()
