"""Fixtures for the admin API tests: a migrated SQLite index, a LiveConfig over it, the app."""
from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from config.loader import parse_config
from dicom_node.admin import create_app
from dicom_node.index.db import make_engine, session_factory
from dicom_node.index.live_config import LiveConfig
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
        "models_dirs": [str(tmp_path / "weights")],  # where POST /api/models may find checkpoints
        **extra,
    }


PG_SERVER = "postgresql://postgres@127.0.0.1:5432"


@contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh, uniquely named PostgreSQL database (dropped afterwards); yields its URL."""
    from sqlalchemy import text

    name = f"srnode_admin_{uuid.uuid4().hex[:12]}"
    server = make_engine(f"{PG_SERVER}/test").execution_options(isolation_level="AUTOCOMMIT")
    with server.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield f"{PG_SERVER}/{name}"
    finally:
        with server.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        server.dispose()


@pytest.fixture()
def database_url(tmp_path: Path) -> Iterator[str]:
    """The index database of a test: SQLite here; test modules may parametrize it (PostgreSQL)."""
    yield f"sqlite:///{tmp_path / 'index.db'}"


@pytest.fixture()
def sessions(database_url: str) -> Iterator[sessionmaker[Session]]:
    url = database_url
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


def make_done_job(sessions: sessionmaker[Session], storage_dir: Path, files: list[Path], model: str = "bicubic",
                  scale: int = 2) -> int:
    """Store real CT slices, upscale them with a registry model, write the derived series with the
    pipeline's highdicom writer, and record a finished Job: what the viewer shows."""
    import torch
    from pydicom import dcmread

    from dicom_node.derive.writer import Derivation, derive_classic
    from dicom_node.index.models import Job, JobState, Series
    from dicom_node.ingest import store_dataset, store_encoded
    from sr_engine.intensity import mapping_for, modality_values
    from sr_engine.registry import ModelSpec, load, resolve

    torch.set_num_threads(1)
    series_pk = None
    for f in files:
        series_pk = store_encoded(sessions, storage_dir, f.read_bytes(), "SCANNER").series_pk
    spec = resolve(model)
    loaded = load(ModelSpec(spec.name, spec.arch, scale=scale), "cpu")
    with sessions() as session, session.begin():
        job = Job(series_pk=series_pk, model=model, checkpoint_sha256=loaded.checkpoint_sha256, scale=scale,
                  state=JobState.done, progress_done=len(files), progress_total=len(files))
        session.add(job)
        session.flush()
        job_id = job.id
        src_uid = session.get(Series, series_pk).series_uid
    derivation = Derivation(model=model, checkpoint_sha256=loaded.checkpoint_sha256, scale=scale)
    for f in files:
        ds = dcmread(f)
        values = modality_values(ds)[None]
        up = loaded.upscale(values, mapping_for("CT"))[0]
        store_dataset(sessions, storage_dir, derive_classic(ds, up, derivation), "SRNODE", derived_from_job=job_id)
    with sessions() as session, session.begin():
        session.get(Job, job_id).derived_series_uid = derivation.series_uid(src_uid)
    return job_id
