"""Fixtures for the pipeline tests: a real Orthanc, a small real CT series, node configs."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import pytest

from tests.conftest import free_port
from tests.orthanc import Orthanc


@pytest.fixture
def node_port() -> int:
    return free_port()


@pytest.fixture
def orthanc(tmp_path: Path, node_port: int) -> Iterator[Orthanc]:
    """Orthanc with the node (AE SRNODE on node_port) as a modality it can forward to."""
    o = Orthanc(tmp_path / "orthanc", {"srnode": ["SRNODE", "127.0.0.1", node_port]}, ConcurrentJobs=1)
    yield o
    o.stop()


@pytest.fixture
def ct_slices(ct_dirs: list[Path]) -> list[Path]:
    """A few contiguous slices of the real Lung-PET-CT-Dx CT (CC BY 4.0, see SOURCES.md)."""
    folder = next(d for d in ct_dirs if d.name.startswith("lung-pet-ct-dx"))
    return sorted(folder.glob("*.dcm"))[:4]


class DicomPeer(Protocol):
    """The destination node_config sends to: tests.orthanc.Orthanc or tests.faults.harness.Destination."""

    @property
    def aet(self) -> str: ...

    @property
    def dicom_port(self) -> int: ...


def node_config(tmp_path: Path, node_port: int, orthanc: DicomPeer, **overrides: object) -> dict:
    """A node config: bicubic x2 for CT back to Orthanc, fast stability and backoff."""
    cfg: dict = {
        "node": {"ae_title": "SRNODE", "host": "127.0.0.1", "port": node_port,
                 "storage_dir": str(tmp_path / "node" / "storage"),
                 "database_url": f"sqlite:///{tmp_path / 'node' / 'index.db'}",
                 "min_free_disk_mb": 0, "shutdown_grace_s": 2},
        "peers": {"PACS": {"ae_title": orthanc.aet, "host": "127.0.0.1", "port": orthanc.dicom_port}},
        "series": {"stable_after_s": 2, "check_interval_s": 0.5},
        "routing": [{"name": "ct", "match": {"modality": "CT"}, "model": "bicubic", "scale": None,
                     "destinations": ["PACS"]}],
        "models": {"bicubic": {"arch": "bicubic", "scale": 2}},
        "broker_url": None,
        "worker": {"device": "cpu", "heartbeat_timeout_s": 6, "batch_size": 1},
        "send": {"backoff_initial_s": 1, "backoff_max_s": 4},
        "admin": {"enabled": False},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    return cfg
