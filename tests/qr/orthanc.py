"""Start a private Orthanc (own ports, own storage) and talk to its REST API."""
from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any


class Orthanc:
    """One Orthanc process with a JSON config in `workdir`; stop() ends it."""

    def __init__(self, workdir: Path, dicom_port: int, http_port: int, modalities: dict[str, list[Any]],
                 aet: str = "ORTHANC") -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.url = f"http://127.0.0.1:{http_port}"
        self.dicom_port = dicom_port
        config = {
            "Name": "srnode-test", "DicomAet": aet, "DicomPort": dicom_port, "HttpPort": http_port,
            "StorageDirectory": str(workdir / "db"), "IndexDirectory": str(workdir / "db"),
            "RemoteAccessAllowed": False, "AuthenticationEnabled": False, "DicomModalities": modalities,
            "DicomCheckCalledAet": False, "Plugins": [], "StableAge": 1, "DicomScpTimeout": 60,
            "DicomAlwaysAllowStore": True, "DicomAlwaysAllowMove": True, "DicomAlwaysAllowFind": True,
            "ConcurrentJobs": 2, "LimitFindResults": 0, "LimitFindInstances": 0,
        }
        (workdir / "orthanc.json").write_text(json.dumps(config))
        self.log = open(workdir / "orthanc.log", "w")
        env = dict(os.environ, TCP_NODELAY="1")
        self.proc = subprocess.Popen(["Orthanc", str(workdir / "orthanc.json")], stdout=self.log,
                                     stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                self.get("/system")
                return
            except (urllib.error.URLError, ConnectionError):
                if self.proc.poll() is not None:
                    raise RuntimeError(f"Orthanc exited; see {workdir / 'orthanc.log'}") from None
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"Orthanc did not answer within 30 s; see {workdir / 'orthanc.log'}")

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=60) as rsp:
            return json.loads(rsp.read())

    def post(self, path: str, body: Any, timeout: float = 120) -> Any:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method="POST")
        with urllib.request.urlopen(req, timeout=timeout) as rsp:
            raw = rsp.read()
        return json.loads(raw) if raw else None

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
