"""The console's Storage panel and the series protect toggle in real headless Chromium, over an
archive of real CT files. Screenshots go to test-artifacts/retention/."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from config.loader import parse_config
from dicom_node.admin import create_app
from dicom_node.admin.service import AdminService
from dicom_node.index.live_config import LiveConfig
from dicom_node.index.models import Series
from tests.admin.conftest import ADMIN, base_config
from tests.browser import launch_chromium, screenshot_dir
from tests.retention.conftest import Archive

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def console(tmp_path: Path, ct_slices: list[Path]) -> Iterator[tuple[str, Archive]]:
    archive = Archive(f"sqlite:///{tmp_path / 'index.db'}", tmp_path / "storage", ct_slices)
    cfg = parse_config(base_config(tmp_path, retention={"quota_mb": 0.001, "keep_after_delivery_h": 0}), environ={})
    service = AdminService(create_app(LiveConfig(cfg, archive.factory, ttl_s=0.0), archive.factory), "127.0.0.1", 0)
    service.start()
    yield f"http://127.0.0.1:{service.port}", archive
    service.stop()
    archive.close()


def test_storage_panel_and_protect_toggle(console: tuple[str, Archive], repo_root: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    base, archive = console
    _, _, derived = archive.pipeline()
    with archive.factory() as s:
        uid = s.get(Series, derived).series_uid  # type: ignore[union-attr]
    shots = screenshot_dir(repo_root, "retention")
    with sync_playwright() as p:
        browser = launch_chromium(p)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        js_errors: list[str] = []
        page.on("pageerror", lambda exc: js_errors.append(str(exc)))
        page.goto(base + "/#/series")
        page.get_by_test_id("token").fill(ADMIN)
        page.get_by_test_id("login").click()
        page.get_by_test_id("series-table").locator("tr", has_text="derived (job").locator("a").click()
        expect(page.get_by_text(uid)).to_be_visible()
        page.get_by_test_id("series-protect").click()
        expect(page.get_by_test_id("series-protect")).to_have_text("Unprotect")
        expect(page.get_by_test_id("series-protected")).to_have_count(1)
        with archive.factory() as s:
            assert s.get(Series, derived).protected is True  # type: ignore[union-attr]
        page.get_by_test_id("nav-storage").click()
        # Above the 1 KiB quota and the only candidate protected: the panel says why it refuses.
        expect(page.get_by_test_id("storage-refusing")).to_contain_text("no series is eligible")
        expect(page.get_by_test_id("storage-table")).to_contain_text("Protected")
        page.screenshot(path=str(shots / "storage_panel.png"), full_page=True)
        browser.close()
    assert js_errors == []
