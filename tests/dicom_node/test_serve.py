"""`srnode serve` in a subprocess: SIGTERM lets an open association finish; `srnode config check`."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from pydicom import dcmread
from pynetdicom import AE
from sqlalchemy import create_engine, func, select

from dicom_node.index.models import Instance
from tests.conftest import free_port

pytestmark = pytest.mark.integration
SRNODE = [sys.executable, "-m", "srnode"]  # the `srnode` console script's entry point
# The same subcommands without the other command modules (whose imports take ~15 s here).
NODE_COMMANDS = [sys.executable, "-m", "dicom_node.commands"]


def _write_config(tmp_path: Path, port: int, **node: object) -> Path:
    cfg = {
        "node": {"ae_title": "SRNODE", "host": "127.0.0.1", "port": port, "storage_dir": "storage",
                 "database_url": "sqlite:///index.db", "require_known_callers": True, "min_free_disk_mb": 1,
                 "shutdown_grace_s": 20, **node},
        "peers": {"PACS": {"ae_title": "PACS", "host": "127.0.0.1", "port": 4242}},
        "series": {"stable_after_s": 15},
    }
    path = tmp_path / "srnode.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _wait_listening(port: int, proc: subprocess.Popen, timeout: float = 60) -> None:  # type: ignore[type-arg]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        r = subprocess.run(["echoscu", "-aet", "PACS", "-aec", "SRNODE", "127.0.0.1", str(port)],
                           capture_output=True, timeout=10)
        if r.returncode == 0:
            return
        time.sleep(0.3)
    raise AssertionError("srnode serve did not start listening")


def test_sigterm_lets_open_association_finish(tmp_path: Path, repo_root: Path, ct_dirs) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    config = _write_config(tmp_path, port)
    proc = subprocess.Popen([*SRNODE, "serve", "--config", str(config)], cwd=repo_root, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait_listening(port, proc)
        files = sorted(ct_dirs[0].glob("*.dcm"))[:6]
        datasets = [dcmread(f) for f in files]
        ae = AE(ae_title="PACS")
        ae.add_requested_context(datasets[0].SOPClassUID, "1.2.840.10008.1.2.1")
        assoc = ae.associate("127.0.0.1", port, ae_title="SRNODE")
        assert assoc.is_established
        assert assoc.send_c_store(datasets[0]).Status == 0
        proc.send_signal(signal.SIGTERM)
        time.sleep(1.0)
        # no new associations once SIGTERM arrived ...
        late = subprocess.run(["echoscu", "-aet", "PACS", "-aec", "SRNODE", "127.0.0.1", str(port)],
                              capture_output=True, timeout=10)
        assert late.returncode != 0
        # ... but the open one keeps working until its peer releases it
        for ds in datasets[1:]:
            assert assoc.send_c_store(ds).Status == 0
        assoc.release()
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    engine = create_engine(f"sqlite:///{tmp_path / 'index.db'}")
    with engine.connect() as conn:
        assert conn.execute(select(func.count(Instance.id))).scalar() == len(files)
    engine.dispose()
    assert "SIGTERM received" in err


def test_config_check(tmp_path: Path, repo_root: Path) -> None:
    good = _write_config(tmp_path, 11112)
    ok = subprocess.run([*NODE_COMMANDS, "config", "check", str(good)], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and ok.stdout.strip() == "OK", ok.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"node": {"port": "eleven"}, "peers": {"PACS": {"ae_title": "PACS", "host": "h"}}}))
    res = subprocess.run([*NODE_COMMANDS, "config", "check", str(bad)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 1
    assert "node.port" in res.stderr and "peers.PACS.port" in res.stderr
    typo = tmp_path / "typo.yaml"
    typo.write_text("node: {ae_titel: X}\n")
    res = subprocess.run([*NODE_COMMANDS, "config", "check", str(typo)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 1 and "node.ae_titel" in res.stderr


def test_serve_reports_port_in_use(tmp_path: Path, repo_root: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        config = _write_config(tmp_path, s.getsockname()[1])
        res = subprocess.run([*NODE_COMMANDS, "serve", "--config", str(config)], capture_output=True, text=True,
                             timeout=60, cwd=repo_root, env={**os.environ})
    assert res.returncode == 1 and "node.port" in res.stderr and "Traceback" not in res.stderr
