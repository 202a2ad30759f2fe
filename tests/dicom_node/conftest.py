"""Fixtures for the DICOM node tests: databases (SQLite and PostgreSQL), nodes, DCMTK senders."""
from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from sqlalchemy import create_engine, text

from config.loader import parse_config
from config.schema import SRNodeConfig
from dicom_node.server import NodeServer
from tests.conftest import free_port

PG_ADMIN_URL = os.environ.get("SRNODE_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
SENDER_AE = "PACS"

# storescu only proposes a compressed transfer syntax when asked to; one flag per syntax.
STORESCU_TS_FLAG = {
    "1.2.840.10008.1.2": "-xi",
    "1.2.840.10008.1.2.1": "-xe",
    "1.2.840.10008.1.2.2": "-xb",
    "1.2.840.10008.1.2.1.99": "-xd",
    "1.2.840.10008.1.2.4.50": "-xy",
    "1.2.840.10008.1.2.4.51": "-xx",
    "1.2.840.10008.1.2.4.57": "-xs",
    "1.2.840.10008.1.2.4.70": "-xs",
    "1.2.840.10008.1.2.4.80": "-xt",
    "1.2.840.10008.1.2.4.81": "-xu",
    "1.2.840.10008.1.2.4.90": "-xv",
    "1.2.840.10008.1.2.4.91": "-xw",
    "1.2.840.10008.1.2.5": "-xr",
}


def _pg_admin():  # type: ignore[no-untyped-def]
    return create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh, uniquely named PostgreSQL database, dropped afterwards."""
    name = f"srnode_node_{uuid.uuid4().hex[:12]}"
    admin = _pg_admin()
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # noqa: BLE001
        admin.dispose()
        pytest.skip(f"PostgreSQL not reachable at {PG_ADMIN_URL}: {type(exc).__name__}")
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The index database, once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'index.db'}"
    return request.getfixturevalue("pg_url")


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'index.db'}"


def node_config(tmp_path: Path, database_url: str, **node: Any) -> SRNodeConfig:
    """A config for a test node on a free port with PACS and OTHER as known peers."""
    data = {
        "node": {
            "ae_title": "SRNODE", "host": "127.0.0.1", "port": free_port(),
            "storage_dir": str(tmp_path / "storage"), "database_url": database_url,
            "require_known_callers": True, "min_free_disk_mb": 1, "shutdown_grace_s": 10,
            **node,
        },
        "peers": {
            "PACS": {"ae_title": SENDER_AE, "host": "127.0.0.1", "port": 4242},
            "OTHER": {"ae_title": "OTHER", "host": "127.0.0.1", "port": 4243},
        },
        "series": {"stable_after_s": 1, "check_interval_s": 0.2},
    }
    return parse_config(data, base_dir=tmp_path, environ={})


@pytest.fixture
def start_node() -> Iterator[Callable[..., NodeServer]]:
    """Start nodes in-process (dicom_node.wiring.build_node; the foundation alone: no
    pipeline/admin services unless `services` is given); all are stopped at teardown."""
    nodes: list[NodeServer] = []

    def _start(cfg: SRNodeConfig, **kwargs: Any) -> NodeServer:
        from dicom_node.wiring import build_node  # imports every service's module (torch): on use only

        kwargs.setdefault("services", [])
        node = build_node(cfg, **kwargs)
        node.start()
        nodes.append(node)
        return node

    yield _start
    for node in nodes:
        if node.server is not None:
            node.stop(grace_s=2)


def storescu(port: int, paths: list[Path] | list[str], aet: str = SENDER_AE, flags: tuple[str, ...] = (),
             timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """Send files with DCMTK storescu (TCP_NODELAY=1 as recommended for DCMTK tools)."""
    cmd = ["storescu", "-aet", aet, "-aec", "SRNODE", *flags, "127.0.0.1", str(port), *map(str, paths)]
    env = {**os.environ, "TCP_NODELAY": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def send_as_is(port: int, path: Path, aet: str = SENDER_AE) -> subprocess.CompletedProcess[str]:
    """storescu proposing exactly the file's own transfer syntax (so nothing is converted)."""
    ts = str(dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)
    return storescu(port, [path], aet=aet, flags=("-R", STORESCU_TS_FLAG[ts]))


def dataset_after_meta(path: Path) -> bytes:
    """The bytes of a Part 10 file after its file meta group (the dataset as encoded)."""
    data = Path(path).read_bytes()
    pos = 132
    while pos + 8 <= len(data) and data[pos:pos + 2] == b"\x02\x00":
        vr = data[pos + 4:pos + 6]
        if vr in (b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN"):
            length = int.from_bytes(data[pos + 8:pos + 12], "little")
            pos += 12 + length
        else:
            length = int.from_bytes(data[pos + 6:pos + 8], "little")
            pos += 8 + length
    return data[pos:]
