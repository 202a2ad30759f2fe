"""The admin service inside a real NodeServer: HTTP over a socket, probes, metrics, C-ECHO to real peers."""
from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from config.loader import parse_config
from dicom_node.admin import service as admin_service
from dicom_node.server import NodeServer
from dicom_node.wiring import build_node
from tests.admin.conftest import ADMIN, READ, auth, base_config
from tests.conftest import free_port


@pytest.fixture()
def storescp(tmp_path: Path) -> Iterator[int]:
    """DCMTK's storescp as a peer that answers C-ECHO."""
    port = free_port()
    out = tmp_path / "scp"
    out.mkdir()
    proc = subprocess.Popen([shutil.which("storescp") or "storescp", "-aet", "PEERSCP", "-od", str(out), str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with __import__("socket").create_connection(("127.0.0.1", port), timeout=0.2):
                break
        except OSError:
            time.sleep(0.05)
    yield port
    proc.terminate()
    proc.wait(10)


@pytest.fixture()
def node(tmp_path: Path) -> Iterator[NodeServer]:
    data = base_config(tmp_path)
    data["node"].update(port=0, host="127.0.0.1")
    data["admin"].update(host="127.0.0.1", port=0)
    server = build_node(parse_config(data, environ={}), services=[admin_service.make_service])
    server.start()
    yield server
    server.stop(0)


def _admin_url(node: NodeServer) -> str:
    from dicom_node.admin.service import AdminService

    service = next(s for s in node.services if isinstance(s, AdminService))
    return f"http://127.0.0.1:{service.port}"


def test_probes_metrics_and_console_over_http(node: NodeServer) -> None:
    base = _admin_url(node)
    with httpx.Client(base_url=base, timeout=10) as http:
        assert http.get("/healthz").json() == {"status": "ok"}
        ready = http.get("/readyz")
        assert ready.status_code == 200 and ready.json()["ready"] is True
        text = http.get("/metrics").text
        assert 'srnode_disk_free_bytes{volume="storage"}' in text
        assert 'srnode_queue_depth{queue="jobs.routine"} 0.0' in text
        assert "srnode_associations_active 0.0" in text
        page = http.get("/")
        assert page.status_code == 200 and "srnode console" in page.text
        assert http.get("/app.js").headers["content-type"].startswith(("text/javascript", "application/javascript"))
        assert http.get("/api/whoami", headers=auth(READ)).json()["role"] == "read"


def test_readyz_fails_when_disk_below_minimum(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from dicom_node.admin import create_app
    from dicom_node.index.db import make_engine, session_factory
    from dicom_node.index.live_config import LiveConfig
    from dicom_node.index.migrate import upgrade

    data = base_config(tmp_path)
    data["node"]["min_free_disk_mb"] = 10**12  # more than any disk has
    cfg = parse_config(data, environ={})
    engine = make_engine(cfg.node.database_url)
    upgrade(cfg.node.database_url, engine=engine)
    sessions = session_factory(engine)
    with TestClient(create_app(LiveConfig(cfg, sessions), sessions)) as c:
        r = c.get("/readyz")
    engine.dispose()
    assert r.status_code == 503
    assert r.json()["checks"]["disk"].startswith("failed:") and r.json()["checks"]["database"] == "ok"


def test_echo_real_peer_and_down_peer(node: NodeServer, storescp: int) -> None:
    base = _admin_url(node)
    down = free_port()
    with httpx.Client(base_url=base, timeout=30, headers=auth(ADMIN)) as http:
        assert http.put("/api/peers/scp", json={"ae_title": "PEERSCP", "host": "127.0.0.1", "port": storescp}
                        ).status_code == 200
        assert http.put("/api/peers/gone", json={"ae_title": "GONE", "host": "127.0.0.1", "port": down}
                        ).status_code == 200
        ok = http.post("/api/peers/scp/echo").json()
        assert ok["ok"] is True and ok["status"] == 0, ok
        bad = http.post("/api/peers/gone/echo").json()
        assert bad["ok"] is False and "association" in bad["error"], bad
        assert http.post("/api/peers/nobody/echo").status_code == 404
        assert http.post("/api/peers/scp/echo", headers=auth(READ)).status_code == 403


def test_peer_added_through_api_may_call_without_restart(node: NodeServer) -> None:
    base = _admin_url(node)
    with httpx.Client(base_url=base, timeout=30, headers=auth(ADMIN)) as http:
        # The node as its own peer: the C-ECHO comes from the node's AE title, now a known caller.
        own = {"ae_title": node.cfg.node.ae_title, "host": "127.0.0.1", "port": node.port}
        assert http.put("/api/peers/self", json=own).status_code == 200
        time.sleep(1.1)  # LiveConfig's cache
        assert http.post("/api/peers/self/echo").json()["ok"] is True


def test_association_and_instance_metrics(node: NodeServer, ct_dirs: list[Path]) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    def scrape() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        text = httpx.get(_admin_url(node) + "/metrics", timeout=10).text
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for fam in text_string_to_metric_families(text) for s in fam.samples}

    def count(m: dict, outcome: str) -> float:
        return m.get(("srnode_associations_total", (("outcome", outcome),)), 0.0)

    before = scrape()
    echoscu = shutil.which("echoscu") or "echoscu"
    port = str(node.port)
    # An unknown calling AE is refused, a configured peer's AE title is accepted (DCMTK as the caller).
    assert subprocess.run([echoscu, "-aet", "STRANGER", "-aec", "SRNODE", "127.0.0.1", port],
                          capture_output=True, timeout=30).returncode != 0
    assert subprocess.run([echoscu, "-aet", "PACS", "-aec", "SRNODE", "127.0.0.1", port],
                          capture_output=True, timeout=30).returncode == 0
    chest = next(d for d in ct_dirs if d.name.startswith("lung-pet-ct-dx"))
    files = sorted(chest.glob("*.dcm"))[:2]
    subprocess.run([shutil.which("storescu") or "storescu", "-aet", "PACS", "-aec", "SRNODE", "127.0.0.1", port,
                    *map(str, files)], check=True, capture_output=True, timeout=60)
    after = scrape()
    assert count(after, "rejected_unknown_ae") - count(before, "rejected_unknown_ae") == 1
    assert count(after, "accepted") - count(before, "accepted") == 2
    assert after[("srnode_instances_received_total", (("modality", "CT"),))] == 2
