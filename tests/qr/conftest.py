"""Q/R fixtures: an index with a known catalogue (SQLite and PostgreSQL), and a running node."""
from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session, sessionmaker

from config.loader import parse_config
from config.schema import SRNodeConfig
from dicom_node.index.db import make_engine, session_factory
from dicom_node.index.migrate import upgrade
from dicom_node.ingest import store_dataset
from dicom_node.wiring import build_node
from tests.conftest import free_port
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


# --- a running node with the real CT stored through it -------------------------------------------
SCU_AE = "QRSCU"
NODE_AE = "SRNODE"


@dataclass
class RunningNode:
    server: Any
    port: int
    scu_port: int  # where movescu/pynetdicom destinations listen (peer "scu")
    slow_port: int  # a pynetdicom storage SCP tests may start (peer "slow")
    orthanc_dicom_port: int
    tmp: Path
    series: dict[str, str]  # ct folder name -> SeriesInstanceUID
    studies: dict[str, str]  # ct folder name -> StudyInstanceUID
    sop_uids: dict[str, set[str]]  # ct folder name -> SOPInstanceUIDs


def node_config(tmp: Path, port: int, scu_port: int, slow_port: int, orthanc_port: int) -> SRNodeConfig:
    """A node config whose peers are the test's own DICOM endpoints."""
    return parse_config({
        "node": {"ae_title": NODE_AE, "host": "127.0.0.1", "port": port, "storage_dir": str(tmp / "storage"),
                 "database_url": f"sqlite:///{tmp / 'index.db'}", "min_free_disk_mb": 0},
        "peers": {
            "scu": {"ae_title": SCU_AE, "host": "127.0.0.1", "port": scu_port},
            "slow": {"ae_title": "SLOWSCP", "host": "127.0.0.1", "port": slow_port},
            "orthanc": {"ae_title": "ORTHANC", "host": "127.0.0.1", "port": orthanc_port},
        },
        "series": {"stable_after_s": 3600},
        "admin": {"enabled": False},
    })


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, ct_dirs: list[Path]) -> Iterator[RunningNode]:
    """A NodeServer with Q/R handlers; the three real CT series stored through it with storescu."""
    tmp = tmp_path_factory.mktemp("qrnode")
    port, scu_port, slow_port, orthanc_port = (free_port() for _ in range(4))
    server = build_node(node_config(tmp, port, scu_port, slow_port, orthanc_port),
                        services=[])  # the production AE (dicom_node.scp_wiring), no services
    server.start()
    try:
        series, studies, sops = {}, {}, {}
        for d in ct_dirs:
            res = run(["storescu", "-aet", SCU_AE, "-aec", NODE_AE, "+sd", "127.0.0.1", str(server.port), str(d)],
                      timeout=120)
            assert res.returncode == 0, res.stdout + res.stderr
            files = sorted(d.glob("*.dcm")) or sorted(p for p in d.iterdir() if p.is_file())
            heads = [dcmread(f, stop_before_pixels=True) for f in files]
            series[d.name] = str(heads[0].SeriesInstanceUID)
            studies[d.name] = str(heads[0].StudyInstanceUID)
            sops[d.name] = {str(h.SOPInstanceUID) for h in heads}
        yield RunningNode(server, server.port, scu_port, slow_port, orthanc_port, tmp, series, studies, sops)
    finally:
        server.stop(grace_s=2)
