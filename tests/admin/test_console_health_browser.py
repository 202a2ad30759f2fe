"""A destination outage on the console's dashboard, in real headless Chromium: a real DCMTK storescp
is down while real CT instances wait for it (failing, shown first, with C-ECHO and "retry now"), then
comes back (ok, backlog delivered). Screenshots go to the pytest tmp dir."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from config.loader import parse_config
from dicom_node.admin import create_app
from dicom_node.admin.service import AdminService
from dicom_node.index.live_config import LiveConfig
from dicom_node.outbox.sender import OutboxSender
from tests.admin.conftest import ADMIN, base_config
from tests.browser import launch_chromium
from tests.conftest import free_port
from tests.outbox.test_outbox_parallel import DEST, StoreSCP, make_queued

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture()
def node(tmp_path: Path, ct_dirs: list[Path]) -> Iterator[tuple[str, StoreSCP, OutboxSender]]:
    factory: sessionmaker[Session]
    factory, storage, _ = make_queued(f"sqlite:///{tmp_path / 'index.db'}", tmp_path / "storage", ct_dirs,
                                      count=4, dest="pacs")
    scp = StoreSCP(free_port(), tmp_path / "received")
    (tmp_path / "received").mkdir()
    raw = base_config(tmp_path, peers={"pacs": {"ae_title": DEST, "host": "127.0.0.1", "port": scp.port},
                                       "archive": {"ae_title": "ARCHIVE", "host": "127.0.0.1", "port": free_port()}},
                      send={"backoff_initial_s": 5, "backoff_max_s": 60})
    cfg = parse_config(raw, environ={})
    sender = OutboxSender(cfg, factory, storage, poll_s=0.1, connect_timeout_s=2)
    admin = AdminService(create_app(LiveConfig(cfg, factory, ttl_s=0.0), factory), "127.0.0.1", 0)
    admin.start()
    sender.start()
    yield f"http://127.0.0.1:{admin.port}", scp, sender
    sender.stop()
    admin.stop()
    scp.kill()


def test_outage_shows_on_dashboard_and_clears(node: tuple[str, StoreSCP, OutboxSender], tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    base, scp, _sender = node
    shots = tmp_path / "screenshots"
    shots.mkdir()
    with sync_playwright() as p:
        browser = launch_chromium(p)
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        js_errors: list[str] = []
        page.on("pageerror", lambda exc: js_errors.append(str(exc)))
        page.goto(base + "/")
        page.get_by_test_id("token").fill(ADMIN)
        page.get_by_test_id("login").click()
        # Down: failing, listed before the idle destination, its error shown, within a minute.
        expect(page.get_by_test_id("dest-state-pacs")).to_have_text("failing", timeout=60_000)
        assert page.locator("tr.dest").first.get_attribute("data-testid") == "dest-pacs"
        expect(page.get_by_test_id("dest-pacs")).to_contain_text("cannot associate")
        expect(page.get_by_test_id("chart-outbox")).to_be_visible()
        expect(page.get_by_test_id("dash-throughput")).to_contain_text("Jobs done (1 h)")
        page.get_by_test_id("dash-echo-pacs").click()
        expect(page.get_by_test_id("dash-echo-result-pacs")).to_contain_text("failed", timeout=20_000)
        page.screenshot(path=str(shots / "01-outage.png"), full_page=True)

        # Back: "retry now" skips the 5 s+ backoff; the backlog goes out and the state clears.
        scp.start()
        page.get_by_test_id("dash-retry-pacs").click()
        expect(page.get_by_test_id("toast")).to_contain_text("retried now")
        expect(page.get_by_test_id("dest-state-pacs")).to_have_text("ok", timeout=30_000)
        expect(page.get_by_test_id("dest-pacs")).to_contain_text("0 waiting")
        page.screenshot(path=str(shots / "02-recovered.png"), full_page=True)
        assert not js_errors, js_errors
        browser.close()
    assert len(scp.received()) == 4
    assert (shots / "01-outage.png").stat().st_size > 0
