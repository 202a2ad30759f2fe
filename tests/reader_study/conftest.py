"""Fixtures for the reader-study tests: real CT slices stored through the node's ingest function,
an admin app over a migrated SQLite index, three x4 models (bicubic, lanczos, a real Real-ESRGAN
checkpoint from ../shared/weights) on small crops so candidates cost little CPU."""
from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
import torch
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from config.loader import parse_config
from dicom_node.admin import create_app
from dicom_node.index.audit import token_fingerprint
from dicom_node.index.live_config import LiveConfig
from dicom_node.ingest import store_encoded
from tests.admin.conftest import sessions  # noqa: F401 - the same index fixture as the admin tests

ADMIN = "rs-admin-token-0123456789"
READERS = ("rs-reader-one-0123456789", "rs-reader-two-0123456789")
STRANGER = "rs-reader-three-0123456789"  # a reader account not named by the study
READ = "rs-read-token-0123456789"
MODELS = ["bicubic", "lanczos", "esrgan-anime"]


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def fp(token: str) -> str:
    return token_fingerprint(token)


@pytest.fixture(autouse=True, scope="session")
def _modest_threads() -> None:
    torch.set_num_threads(2)


def node_config(tmp_path: Path, shared_dir: Path) -> dict[str, Any]:
    """A node config with the three study models and the test's tokens."""
    weights = shared_dir / "weights" / "RealESRGAN_x4plus_anime_6B.pth"
    return {
        "node": {"ae_title": "SRNODE", "storage_dir": str(tmp_path / "storage"),
                 "database_url": f"sqlite:///{tmp_path / 'index.db'}", "min_free_disk_mb": 0},
        "models": {"esrgan-anime": {"arch": "realesrgan", "weights": str(weights), "scale": 4}},
        "worker": {"device": "cpu", "batch_size": 1},
        "admin": {"host": "127.0.0.1", "port": 0,
                  "tokens": {ADMIN: "admin", READ: "read", READERS[0]: "reader",
                             READERS[1]: {"role": "reader", "name": "Dr. Kim"},
                             STRANGER: "reader"}},
    }


@pytest.fixture()
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """SQLite by default; `parametrize("database_url", ["postgresql"], indirect=True)` for a fresh
    PostgreSQL database of the test's own (dropped afterwards)."""
    if getattr(request, "param", "sqlite") == "postgresql":
        from tests.admin.conftest import postgres_database

        with postgres_database() as url:
            yield url
    else:
        yield f"sqlite:///{tmp_path / 'index.db'}"


@pytest.fixture()
def live(tmp_path: Path, shared_dir: Path, sessions: sessionmaker[Session]) -> LiveConfig:
    return LiveConfig(parse_config(node_config(tmp_path, shared_dir), environ={}), sessions, ttl_s=0.0)


@pytest.fixture()
def client(live: LiveConfig, sessions: sessionmaker[Session]) -> Iterator[TestClient]:
    with TestClient(create_app(live, sessions)) as c:
        yield c


@pytest.fixture()
def stored_slices(tmp_path: Path, ct_dirs: list[Path], sessions: sessionmaker[Session]) -> list[str]:
    """Four real chest CT slices stored through the node's ingest function; their SOP Instance UIDs."""
    chest = next(d for d in ct_dirs if d.name.startswith("lung-pet-ct-dx"))
    uids = []
    for f in sorted(chest.glob("*.dcm"))[12:16]:
        store_encoded(sessions, tmp_path / "storage", f.read_bytes(), "SCANNER")
        uids.append(str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID))
    return uids


def wait_open(get: Any, study_id: int, timeout_s: float = 120) -> dict[str, Any]:
    """Poll the admin API until the study's candidates are computed."""
    deadline = time.monotonic() + timeout_s
    study: dict[str, Any] = {}
    while time.monotonic() < deadline:
        study = get(f"/api/reader-studies/{study_id}").json()
        if study["state"] in ("open", "failed"):
            assert study["state"] == "open", study["error"]
            return study
        time.sleep(0.2)
    raise AssertionError(f"study {study_id} still {study.get('state')} after {timeout_s} s")
