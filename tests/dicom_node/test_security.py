"""Unknown callers, TLS, free-disk floor; no patient names or IDs in any log line."""
from __future__ import annotations

import logging
import subprocess
from pathlib import Path

import pytest
from pydicom import dcmread

from config.loader import parse_config
from tests.dicom_node.conftest import node_config, storescu

pytestmark = pytest.mark.integration


def _echo(port: int, aet: str, *extra: str, called: str = "SRNODE") -> subprocess.CompletedProcess[str]:
    return subprocess.run(["echoscu", "-aet", aet, "-aec", called, *extra, "127.0.0.1", str(port)],
                          capture_output=True, text=True, timeout=30, env={"TCP_NODELAY": "1", "PATH": "/usr/bin:/bin"})


def test_unknown_calling_ae_rejected(tmp_path: Path, sqlite_url: str, start_node, caplog) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.INFO)
    node = start_node(node_config(tmp_path, sqlite_url))
    bad = _echo(node.port, "INTRUDER")
    assert bad.returncode != 0
    assert "Association Rejected" in bad.stderr and "Calling AE Title Not Recognized" in bad.stderr
    lines = [r.getMessage() for r in caplog.records if r.name == "dicom_node.association"]
    assert len(lines) == 1 and "INTRUDER" in lines[0]
    assert _echo(node.port, "PACS").returncode == 0


def test_other_called_ae_rejected(tmp_path: Path, sqlite_url: str, start_node, caplog) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.INFO)
    node = start_node(node_config(tmp_path, sqlite_url))
    bad = _echo(node.port, "PACS", called="WRONGAE")
    assert bad.returncode != 0
    # A-ASSOCIATE-RJ: rejected-permanent, service-user, reason 7.
    assert "Association Rejected" in bad.stderr and "Called AE Title Not Recognized" in bad.stderr, bad.stderr
    lines = [r.getMessage() for r in caplog.records if r.name == "dicom_node.association"]
    assert len(lines) == 1 and "WRONGAE" in lines[0]
    assert _echo(node.port, "PACS").returncode == 0


def test_other_called_ae_allowed_when_not_required(tmp_path: Path, sqlite_url: str, start_node) -> None:  # type: ignore[no-untyped-def]
    node = start_node(node_config(tmp_path, sqlite_url, require_called_ae=False))
    assert _echo(node.port, "PACS", called="WRONGAE").returncode == 0


def test_unknown_callers_allowed_when_not_required(tmp_path: Path, sqlite_url: str, start_node) -> None:  # type: ignore[no-untyped-def]
    node = start_node(node_config(tmp_path, sqlite_url, require_known_callers=False))
    assert _echo(node.port, "ANYONE").returncode == 0


def test_low_disk_refuses_new_associations(tmp_path: Path, sqlite_url: str, start_node, caplog) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.INFO)
    node = start_node(node_config(tmp_path, sqlite_url, min_free_disk_mb=10**12))  # more than any disk has
    result = _echo(node.port, "PACS")
    assert result.returncode != 0 and "Association Rejected" in result.stderr
    assert any("min_free_disk_mb" in r.getMessage() for r in caplog.records if r.name == "dicom_node.association")


def _self_signed(tmp_path: Path, name: str) -> tuple[Path, Path]:
    key, cert = tmp_path / f"{name}.key", tmp_path / f"{name}.crt"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "2", "-subj", f"/CN={name}"], check=True, capture_output=True, timeout=60)
    return key, cert


def test_tls(tmp_path: Path, sqlite_url: str, start_node) -> None:  # type: ignore[no-untyped-def]
    skey, scert = _self_signed(tmp_path, "srnode")
    ckey, ccert = _self_signed(tmp_path, "pacs")
    cfg = node_config(tmp_path, sqlite_url)
    cfg.node.tls = parse_config({"node": {"tls": {"cert": str(scert), "key": str(skey), "ca": str(ccert),
                                                  "require_client_cert": True}}}, environ={}).node.tls
    node = start_node(cfg)
    ok = _echo(node.port, "PACS", "+tls", str(ckey), str(ccert), "+cf", str(scert))
    assert ok.returncode == 0, ok.stderr
    plain = _echo(node.port, "PACS")
    assert plain.returncode != 0
    other_key, other_cert = _self_signed(tmp_path, "stranger")
    stranger = _echo(node.port, "PACS", "+tls", str(other_key), str(other_cert), "+cf", str(scert))
    assert stranger.returncode != 0  # client certificate not signed by node.tls.ca


def test_no_patient_names_or_ids_in_logs(tmp_path: Path, sqlite_url: str, start_node, ct_dirs, caplog) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.DEBUG)
    node = start_node(node_config(tmp_path, sqlite_url))
    files = sorted(p for d in ct_dirs for p in d.glob("*.dcm"))
    assert storescu(node.port, ct_dirs, flags=("+sd", "+r")).returncode == 0
    assert storescu(node.port, files[:1], aet="INTRUDER").returncode != 0
    node.assembler.stop()
    node.assembler.stable_after_s = 0
    node.assembler.run_once()
    secrets = set()
    for f in files:
        ds = dcmread(f, stop_before_pixels=True)
        secrets |= {str(ds.get("PatientName", "")).strip(), str(ds.get("PatientID", "")).strip()}
    secrets.discard("")
    assert secrets
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "stable" in text  # the node did log something
    leaked = [s for s in secrets if s in text]
    assert leaked == []
