"""Q/R fixtures: an index with a known catalogue (SQLite and PostgreSQL), and a running node."""
from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.index.db import make_engine, session_factory
from dicom_node.index.migrate import upgrade
from dicom_node.ingest import store_dataset
from tests.qr.synthetic import ROOT, make_instance

PG_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


@dataclass
class Catalogue:
    """UIDs of the generated catalogue, by short name."""

    uids: dict[str, str]
    storage_dir: Path
    sessions: sessionmaker[Session]


# (patient name, patient id, study, date, time, accession, study description)
STUDIES = {
    "A": ("DOE^JOHN", "P1", "20240101", "101500", "ACC1", "CHEST"),
    "B": ("doe^jane", "P2", "20240215", "153000.25", "ACC2", "HEAD"),
    "C": ("Müller^Hans", "P3", "20231231", "080000", "ACC3", "ABDOMEN"),
    "D": ("SMITH_X%Y", "P4", "20240301", "", "ACC4", "CHEST LOW DOSE"),
}
# series: (study, modality, number, description, instances, derived_from_job)
SERIES = {
    "A1": ("A", "CT", 1, "AXIAL 1.0", 3, None),
    "A2": ("A", "CT", 2, "CORONAL", 2, None),
    "B1": ("B", "MR", 1, "T1 SAG", 2, None),
    "C1": ("C", "CT", 3, "AXIAL 5.0", 1, None),
    "C2": ("C", "CT", 1003, "SRx4 hat: AXIAL 5.0", 1, 7),
    "D1": ("D", "CT", 1, "50% DOSE_[A]", 1, None),
}


def fill_catalogue(sessions: sessionmaker[Session], storage_dir: Path) -> Catalogue:
    """Store the catalogue through dicom_node.ingest (the one way into the index)."""
    uids = {k: f"{ROOT}{i}" for i, k in enumerate(list(STUDIES) + list(SERIES), start=1)}
    for skey, (study, modality, number, description, count, job) in SERIES.items():
        name, pid, date, time, acc, sdesc = STUDIES[study]
        for n in range(1, count + 1):
            uids[f"{skey}.{n}"] = f"{uids[skey]}.{n}"
            ds = make_instance(name, pid, uids[study], date, time, acc, sdesc, uids[skey], modality, number,
                               description, uids[f"{skey}.{n}"], n)
            store_dataset(sessions, storage_dir, ds, sender_ae="TESTSCU", derived_from_job=job)
    return Catalogue(uids, storage_dir, sessions)


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def catalogue(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Catalogue]:
    """The catalogue in a fresh index, once on SQLite and once on PostgreSQL (own database)."""
    tmp = tmp_path_factory.mktemp(f"qr-{request.param}")
    admin = None
    if request.param == "sqlite":
        url = f"sqlite:///{tmp / 'index.db'}"
    else:
        name = f"srnode_qr_{uuid.uuid4().hex[:12]}"
        admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        url = f"postgresql://postgres@127.0.0.1:5432/{name}"
    engine = make_engine(url)
    upgrade(url, engine)
    try:
        yield fill_catalogue(session_factory(engine), tmp / "storage")
    finally:
        engine.dispose()
        if admin is not None:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()


def run(cmd: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run a DCMTK tool; output (stdout+stderr) is kept for assertions and failure messages."""
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
