"""Issue 17 part B over real parts: delivery health against a real DCMTK storescp that goes down and
comes back, job delivery counts, stats history and disk, token names, audit before/after, and the
viewer's PSNR on a real CT series with PixelPaddingValue -1500."""
from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from config.loader import parse_config
from dicom_node.admin import create_app
from dicom_node.index.audit import audit_change
from dicom_node.index.live_config import LiveConfig
from dicom_node.index.models import Instance, Job, JobState, Outbox, utcnow
from dicom_node.outbox.sender import OutboxSender
from tests.admin.conftest import ADMIN, READ, auth, base_config, make_done_job
from tests.conftest import free_port
from tests.faults.harness import wait_until
from tests.outbox.test_outbox_parallel import DEST, StoreSCP, make_queued

SENDER_LOG = "dicom_node.outbox.sender"


def _delivery(client: TestClient) -> dict:
    return client.get("/api/peers", headers=auth(READ)).json()["pacs"]["delivery"]


@pytest.fixture()
def outage(tmp_path: Path, ct_dirs: list[Path]) -> Iterator[tuple[TestClient, StoreSCP, OutboxSender, sessionmaker]]:
    """6 real CT slices queued to a storescp that is not running yet, one finished job owning them,
    the sender running and the admin app over the same index."""
    factory, storage, _uids = make_queued(f"sqlite:///{tmp_path / 'index.db'}", tmp_path / "storage", ct_dirs,
                                          count=6, dest="pacs")
    with factory() as s, s.begin():
        series_pk = s.scalar(select(Instance.series_pk).limit(1))
        job = Job(series_pk=series_pk, model="bicubic", scale=2, state=JobState.done, finished_at=utcnow())
        s.add(job)
        s.flush()
        s.execute(update(Outbox).values(job_pk=job.id))
    out = tmp_path / "received"
    out.mkdir()
    scp = StoreSCP(free_port(), out)
    raw = base_config(tmp_path, peers={"pacs": {"ae_title": DEST, "host": "127.0.0.1", "port": scp.port}},
                      send={"backoff_initial_s": 0.5, "backoff_max_s": 30})
    cfg = parse_config(raw, environ={})
    sender = OutboxSender(cfg, factory, storage, poll_s=0.1, batch=8, connect_timeout_s=2)
    with TestClient(create_app(LiveConfig(cfg, factory, ttl_s=0.0), factory)) as client:
        yield client, scp, sender, factory
    sender.stop()
    scp.kill()


@pytest.mark.integration
def test_destination_down_is_failing_then_ok_once_back_and_drained(
        outage: tuple[TestClient, StoreSCP, OutboxSender, sessionmaker], caplog: pytest.LogCaptureFixture) -> None:
    client, scp, sender, factory = outage
    caplog.set_level(logging.INFO, logger=SENDER_LOG)
    assert _delivery(client)["state"] == "ok"  # rows waiting that never failed
    started = time.monotonic()
    sender.start()
    down = wait_until(lambda: (d := _delivery(client))["state"] == "failing" and d, 60, "state failing")
    assert time.monotonic() - started < 60
    assert down["pending"] == 6 and "cannot associate" in down["last_error"]
    assert down["oldest_pending_s"] >= 0 and down["last_success_at"] is None
    job = client.get("/api/jobs", headers=auth(READ)).json()[0]
    assert job["state"] == "done" and job["delivery"] == {"pending": 6, "failed": 0, "delivered": 0, "held": 0}
    # Several passes fail (backoff 0.5 s, 1 s): still one WARNING for the outage.
    wait_until(lambda: any(r.attempts >= 3 for r in _rows(factory)), 30, "three failed attempts")
    lines = [r for r in caplog.records if "cannot associate" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.WARNING, [r.getMessage() for r in lines]

    # A backoff grown long (as after a longer outage): no row comes due by itself while the peer
    # comes back, so what "retry now" makes due is exactly the backlog (no race with the sender).
    _postpone_all(factory, hours=1)
    scp.start()
    # "Retry now" makes every row due at once (audited).
    r = client.post("/api/peers/pacs/retry", headers=auth(ADMIN))
    assert r.status_code == 200 and r.json()["pending_made_due"] == 6, r.text
    assert client.post("/api/peers/pacs/retry", headers=auth(READ)).status_code == 403
    back = wait_until(lambda: (d := _delivery(client))["pending"] == 0 and d, 30, "backlog delivered")
    assert back["state"] == "ok" and back["last_success_at"] and back["last_error"] == ""
    assert len(scp.received()) == 6
    assert client.get("/api/jobs", headers=auth(READ)).json()[0]["delivery"]["delivered"] == 6
    recovered = [r for r in caplog.records if "delivers again" in r.getMessage()]
    assert len(recovered) == 1 and recovered[0].levelno == logging.INFO
    audit = client.get("/api/audit?action=peer.retry", headers=auth(READ)).json()
    assert audit[0]["change"] == {"before": None, "after": {"pending_made_due": 6}, "how": "retry-now"}


def _postpone_all(factory: sessionmaker[Session], hours: float) -> None:
    """Set every row's next attempt `hours` ahead, again if an attempt already on its way moved one back."""
    def postponed() -> bool:
        with factory() as s, s.begin():
            s.execute(update(Outbox).values(next_attempt_at=utcnow() + timedelta(hours=hours)))
        time.sleep(0.5)  # an attempt that was under way when we wrote would have written its own backoff
        soon = utcnow() + timedelta(hours=hours / 2)
        return all(r.next_attempt_at is not None and _aware(r.next_attempt_at) > soon for r in _rows(factory))
    wait_until(postponed, 30, "every row postponed")


def _aware(t: datetime) -> datetime:
    return t if t.tzinfo else t.replace(tzinfo=UTC)  # SQLite returns naive UTC


def _rows(factory: sessionmaker[Session]) -> list[Outbox]:
    with factory() as s:
        return list(s.scalars(select(Outbox)))


def test_idle_destination_and_unknown_peer(client: TestClient) -> None:
    assert client.get("/api/peers", headers=auth(READ)).json()["pacs"]["delivery"] == {
        "state": "idle", "pending": 0, "failed": 0, "oldest_pending_s": None, "last_error": "",
        "last_success_at": None, "last_failure_at": None}
    assert client.post("/api/peers/nope/retry", headers=auth(ADMIN)).status_code == 404


def test_stats_history_and_disk(client: TestClient, sessions: sessionmaker[Session], live: LiveConfig,
                                ct_dirs: list[Path]) -> None:
    from dicom_node.ingest import store_encoded

    files = sorted(ct_dirs[0].glob("*.dcm"))[:3]
    storage = Path(live.base.node.storage_dir)
    series_pk = [store_encoded(sessions, storage, f.read_bytes(), "SCANNER") for f in files][0].series_pk
    with sessions() as s, s.begin():
        s.add(Job(series_pk=series_pk, model="bicubic", state=JobState.done, finished_at=utcnow()))
        s.add(Job(series_pk=series_pk, model="lanczos", state=JobState.queued))
    h = client.get("/api/stats/history?hours=2", headers=auth(READ)).json()
    assert h["bucket_s"] == 600 and len(h["buckets"]) == 12 == len(h["jobs_done"]) == len(h["outbox_pending"])
    assert sum(h["jobs_done"]) == 1 and h["jobs_done"][-1] == 1
    assert sum(h["instances_received"]) == 3 and h["instances_received"][-1] == 3
    assert h["jobs_waiting"][-1] == 1 and h["jobs_waiting"][0] == 0
    assert client.get("/api/stats/history?hours=100", headers=auth(READ)).status_code == 422
    disk = client.get("/api/stats", headers=auth(READ)).json()["disk"]
    assert disk["used_bytes"] > 0 and disk["free_bytes"] > 0 and disk["total_bytes"] >= disk["used_bytes"]


@pytest.fixture()
def named_client(tmp_path: Path, sessions: sessionmaker[Session]) -> Iterator[TestClient]:
    raw = base_config(tmp_path)
    raw["admin"]["tokens"] = {ADMIN: {"role": "admin", "name": "Dr. Kim"}, READ: "read"}
    live = LiveConfig(parse_config(raw, environ={}), sessions, ttl_s=0.0)
    with TestClient(create_app(live, sessions)) as c:
        yield c


def test_token_names_in_console_and_audit(named_client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    me = named_client.get("/api/whoami", headers=auth(ADMIN)).json()
    assert me == {"role": "admin", "actor": "Dr. Kim (admin)", "name": "Dr. Kim"}
    assert named_client.get("/api/whoami", headers=auth(READ)).json()["actor"].startswith("read:")
    r = named_client.put("/api/peers/ris", json={"ae_title": "RIS", "host": "h", "port": 104}, headers=auth(ADMIN))
    assert r.status_code == 200, r.text
    assert named_client.get("/api/audit", headers=auth(READ)).json()[0]["actor"] == "Dr. Kim (admin)"
    # A page asking "who am I?" before sign-in sends the unset token: 401, and no WARNING.
    caplog.set_level(logging.INFO, logger="srnode.admin")
    for unset in ("null", "undefined"):
        assert named_client.get("/api/whoami", headers=auth(unset)).status_code == 401
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert named_client.get("/api/whoami", headers=auth("wrong-token")).status_code == 401
    assert [r for r in caplog.records if "unknown bearer token" in r.getMessage()]


def test_token_entry_is_validated(tmp_path: Path) -> None:
    from config.loader import ConfigError

    raw = base_config(tmp_path)
    raw["admin"]["tokens"] = {ADMIN: {"role": "root", "name": "x"}}
    with pytest.raises(ConfigError, match="admin.tokens"):
        parse_config(raw, environ={})


def test_audit_shows_before_and_after(client: TestClient, sessions: sessionmaker[Session]) -> None:
    for port in (104, 105):
        r = client.put("/api/peers/ris", json={"ae_title": "RIS", "host": "h", "port": port}, headers=auth(ADMIN))
        assert r.status_code == 200, r.text
    second, first = client.get("/api/audit?action=config.set.peers", headers=auth(READ)).json()[:2]
    assert second["change"]["before"] == {"ris": {"port": 104}}
    assert second["change"]["after"] == {"ris": {"port": 105}}
    assert first["change"]["before"] == {} and first["change"]["after"]["ris"]["ae_title"] == "RIS"
    # The helper the routing page's two ways of changing a rule use: they read differently.
    rules = [{"name": "ct", "model": "bicubic", "match": {"modality": "CT"}}]
    with sessions() as s, s.begin():
        audit_change(s, "admin:x", "config.set.routing", rules, [{**rules[0], "model": "lanczos"}], "per-modality")
        audit_change(s, "admin:x", "config.set.routing", rules, [*rules, {"name": "mr", "model": "bicubic"}], "json")
    json_edit, per_modality = client.get("/api/audit?action=config.set.routing", headers=auth(READ)).json()[:2]
    assert per_modality["change"] == {"before": {"0": {"model": "bicubic"}}, "after": {"0": {"model": "lanczos"}},
                                      "how": "per-modality"}
    assert json_edit["change"]["how"] == "json" and json_edit["change"]["after"][1]["name"] == "mr"


def test_psnr_leaves_out_padding(client: TestClient, live: LiveConfig, sessions: sessionmaker[Session],
                                 ct_dirs: list[Path]) -> None:
    head = next(d for d in ct_dirs if d.name.startswith("ge-head"))  # PixelPaddingValue -1500
    files = sorted(head.glob("*.dcm"))[:1]
    job = make_done_job(sessions, Path(live.base.node.storage_dir), files, model="bicubic", scale=2)
    psnr = client.get(f"/api/jobs/{job}/slices/0/psnr", headers=auth(READ)).json()
    # Counting the padding (clipped to -1024 HU by the model's intensity path) gave ~25 dB.
    assert psnr["psnr_db"] is not None and psnr["psnr_db"] > 35, psnr
    assert 0.3 < psnr["pixels_used"] < 0.785, psnr  # inside the circle (π/4), padding left out


def test_favicon_is_served(client: TestClient) -> None:
    for path in ("/favicon.ico", "/favicon.svg"):
        r = client.get(path)
        assert r.status_code == 200 and r.headers["content-type"].startswith("image/svg+xml"), path
    assert 'rel="icon"' in client.get("/").text
