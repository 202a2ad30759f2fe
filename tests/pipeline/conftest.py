"""Fixtures for the pipeline tests: a real Orthanc, a small real CT series, node configs."""
from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import free_port


@dataclass
class Orthanc:
    """A running Orthanc with its own storage; REST on http_port, DICOM on dicom_port."""

    aet: str
    dicom_port: int
    http_port: int
    proc: subprocess.Popen
    config_path: Path
    log_path: Path

    def get(self, path: str):  # type: ignore[no-untyped-def]
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=30) as r:
            return json.loads(r.read())

    def post(self, path: str, body: object):  # type: ignore[no-untyped-def]
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{self.http_port}{path}", data=data, method="POST")
        with urllib.request.urlopen(req, timeout=120) as r:
            text = r.read()
        return json.loads(text) if text.strip() else None

    def upload(self, files: list[Path]) -> str:
        """Store files through REST; returns the Orthanc id of their series."""
        series = ""
        for f in files:
            series = self.post("/instances", f.read_bytes())["ParentSeries"]
        return series

    def series_by_uid(self, uid: str) -> list[str]:
        return self.post("/tools/lookup", uid.encode()) and [
            x["ID"] for x in self.post("/tools/lookup", uid.encode()) if x["Type"] == "Series"
        ]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def start(self) -> None:
        """(Re)start on the same ports and storage."""
        self.proc = subprocess.Popen(["Orthanc", str(self.config_path)], stdout=self.log_path.open("ab"),
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                self.get("/system")
                return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"Orthanc did not start; see {self.log_path}")


def start_orthanc(workdir: Path, node_aet: str, node_port_ref: dict) -> Orthanc:
    """Write a config (our node as a modality at node_port_ref['port']) and start Orthanc."""
    workdir.mkdir(parents=True, exist_ok=True)
    dicom_port, http_port = free_port(), free_port()
    cfg = {
        "Name": "srnode-test", "StorageDirectory": str(workdir / "db"), "IndexDirectory": str(workdir / "db"),
        "DicomAet": "ORTHANC", "DicomPort": dicom_port, "HttpPort": http_port,
        "RemoteAccessAllowed": False, "AuthenticationEnabled": False, "DicomServerEnabled": True,
        "DicomAlwaysAllowStore": True, "DicomCheckCalledAet": False, "OverwriteInstances": True,
        "DicomModalities": {"srnode": [node_aet, "127.0.0.1", node_port_ref["port"]]},
        "Plugins": [], "StableAge": 1, "ConcurrentJobs": 1, "HttpsVerifyPeers": False,
    }
    config_path = workdir / "orthanc.json"
    config_path.write_text(json.dumps(cfg))
    orthanc = Orthanc("ORTHANC", dicom_port, http_port, None, config_path, workdir / "orthanc.log")  # type: ignore[arg-type]
    orthanc.start()
    return orthanc


@pytest.fixture
def node_port() -> int:
    return free_port()


@pytest.fixture
def orthanc(tmp_path: Path, node_port: int) -> Iterator[Orthanc]:
    if shutil.which("Orthanc") is None:
        pytest.fail("Orthanc is not installed (make system-deps)")
    o = start_orthanc(tmp_path / "orthanc", "SRNODE", {"port": node_port})
    yield o
    o.stop()


@pytest.fixture
def ct_slices(ct_dirs: list[Path]) -> list[Path]:
    """A few contiguous slices of the real Lung-PET-CT-Dx CT (CC BY 4.0, see SOURCES.md)."""
    folder = next(d for d in ct_dirs if d.name.startswith("lung-pet-ct-dx"))
    return sorted(folder.glob("*.dcm"))[:4]


def node_config(tmp_path: Path, node_port: int, orthanc: Orthanc, **overrides: object) -> dict:
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
