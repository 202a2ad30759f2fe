"""Fixtures for the admin API tests: a migrated SQLite index, a LiveConfig over it, the app."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from config.live import LiveConfig
from config.loader import parse_config
from dicom_node.admin import create_app
from dicom_node.index.db import make_engine, session_factory
from dicom_node.index.migrate import upgrade

ADMIN = "admin-token-0123456789"
READ = "read-token-0123456789"
READER = "reader-token-0123456789"


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def base_config(tmp_path: Path, **extra: Any) -> dict[str, Any]:
    return {
        "node": {"ae_title": "SRNODE", "storage_dir": str(tmp_path / "storage"),
                 "database_url": f"sqlite:///{tmp_path / 'index.db'}", "min_free_disk_mb": 1},
        "peers": {"pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": 11112}},
        "routing": [{"name": "ct", "match": {"modality": "CT"}, "model": "bicubic", "destinations": ["pacs"]}],
        "admin": {"tokens": {ADMIN: "admin", READ: "read", READER: "reader"}},
        **extra,
    }


@pytest.fixture()
def sessions(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    url = f"sqlite:///{tmp_path / 'index.db'}"
    engine = make_engine(url)
    upgrade(url, engine=engine)
    yield session_factory(engine)
    engine.dispose()


@pytest.fixture()
def live(tmp_path: Path, sessions: sessionmaker[Session]) -> LiveConfig:
    return LiveConfig(parse_config(base_config(tmp_path), environ={}), sessions, ttl_s=0.0)


@pytest.fixture()
def client(live: LiveConfig, sessions: sessionmaker[Session]) -> Iterator[TestClient]:
    with TestClient(create_app(live, sessions)) as c:
        yield c
