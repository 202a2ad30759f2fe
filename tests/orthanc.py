"""A private Orthanc for tests (own ports, own storage, own config), with its REST API."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port


class Orthanc:
    """One Orthanc process configured from `workdir/orthanc.json`.

    `modalities` are its DicomModalities (name → [AE title, host, port]); `config` adds or overrides
    Orthanc options. stop() and start() restart it on the same ports and storage.
    """

    def __init__(self, workdir: Path, modalities: dict[str, list[Any]], dicom_port: int | None = None,
                 http_port: int | None = None, aet: str = "ORTHANC", **config: Any) -> None:
        if shutil.which("Orthanc") is None:
            pytest.fail("Orthanc is not installed (make system-deps)")
        workdir.mkdir(parents=True, exist_ok=True)
        self.aet = aet
        self.dicom_port = dicom_port or free_port()
        self.http_port = http_port or free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.config_path = workdir / "orthanc.json"
        self.log_path = workdir / "orthanc.log"
        self.config_path.write_text(json.dumps({
            "Name": "srnode-test", "DicomAet": aet, "DicomPort": self.dicom_port, "HttpPort": self.http_port,
            "StorageDirectory": str(workdir / "db"), "IndexDirectory": str(workdir / "db"),
            "RemoteAccessAllowed": False, "AuthenticationEnabled": False, "DicomServerEnabled": True,
            "DicomModalities": modalities, "DicomCheckCalledAet": False, "Plugins": [], "StableAge": 1,
            "DicomScpTimeout": 60, "DicomAlwaysAllowStore": True, "DicomAlwaysAllowMove": True,
            "DicomAlwaysAllowFind": True, "OverwriteInstances": True, "ConcurrentJobs": 2,
            "LimitFindResults": 0, "LimitFindInstances": 0, "HttpsVerifyPeers": False,
            **config,
        }))
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        """(Re)start on the same ports and storage; returns once the REST API answers."""
        # DCMTK (inside Orthanc) stalls ~40 ms per instance on Nagle's algorithm without this.
        env = dict(os.environ, TCP_NODELAY="1")
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(["Orthanc", str(self.config_path)], stdout=log, stderr=subprocess.STDOUT,
                                         env=env)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                self.get("/system")
                return
            except (urllib.error.URLError, ConnectionError):
                if self.proc.poll() is not None:
                    raise RuntimeError(f"Orthanc exited; see {self.log_path}") from None
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"Orthanc did not answer within 30 s; see {self.log_path}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=60) as rsp:
            return json.loads(rsp.read())

    def post(self, path: str, body: Any, timeout: float = 120) -> Any:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method="POST")
        with urllib.request.urlopen(req, timeout=timeout) as rsp:
            raw = rsp.read()
        return json.loads(raw) if raw.strip() else None

    def upload(self, files: list[Path]) -> str:
        """Store files through REST; returns the Orthanc id of their series."""
        series = ""
        for f in files:
            series = self.post("/instances", f.read_bytes())["ParentSeries"]
        return series

    def series_by_uid(self, uid: str) -> list[str]:
        return [x["ID"] for x in self.post("/tools/lookup", uid.encode()) or [] if x["Type"] == "Series"]
