"""OHIF (the npm build `make viewer` fetches) in real headless Chromium against the node's /dicomweb:
one click on the console's series page opens the study with the original and the upscaled
series side by side; scrolling one pane moves the other. Screenshots go to test-artifacts/ohif/."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.browser import launch_chromium, screenshot_dir
from tests.dicomweb.conftest import OHIF_DIR, READ, Site, auth

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PANES = ("srnode-original", "srnode-upscaled")


def _pane_pixels(shot: Path, box: dict[str, float]) -> np.ndarray:
    with Image.open(shot) as im:
        crop = im.convert("L").crop((int(box["x"]), int(box["y"]), int(box["x"] + box["width"]),
                                     int(box["y"] + box["height"])))
        return np.asarray(crop, dtype=np.float32)


def _wait_for_positions(page: Any, position: str) -> None:
    """Wait until both panes' image-index overlays ("I: 2 (2/4)") read `position` ("2/4")."""
    page.wait_for_function("""position => {
        const shown = Array.from(document.querySelectorAll('[title="Instance Number"]'), e => e.textContent);
        return shown.length === 2 && shown.every(t => t.includes('(' + position + ')'));
    }""", arg=position, timeout=30_000)


def test_console_opens_original_and_upscaled_side_by_side_in_ohif(site: Site, stowed: dict[str, Any],
                                                                  repo_root: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    if not (OHIF_DIR / "index.html").is_file():
        pytest.fail(f"OHIF is not installed at {OHIF_DIR} (make viewer)")
    shots = screenshot_dir(repo_root, "ohif")
    base = site.url.removesuffix("/dicomweb")
    job = stowed["job"]
    with httpx.Client(base_url=base, headers=auth(READ), timeout=30) as http:
        detail = http.get(f"/api/series/{stowed['series']}").json()
        # Without a token the viewer's data stays closed.
        assert httpx.get(site.url + f"/studies/{stowed['study']}/series").status_code == 401
    ohif_url = next(j["ohif_url"] for j in detail["jobs"] if j["id"] == job.id)
    assert job.derived_series_uid in ohif_url and stowed["series"] in ohif_url

    with sync_playwright() as p:
        browser = launch_chromium(p)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.goto(base + "/")
        page.get_by_test_id("token").fill(READ)
        page.get_by_test_id("login").click()
        expect(page.get_by_test_id("dash-queue")).to_be_visible()
        page.get_by_test_id("nav-series").click()
        page.get_by_test_id(f"series-{stowed['series']}").click()
        link = page.get_by_test_id(f"ohif-{job.id}")
        expect(link).to_be_visible()
        # A read token sees no protect button, and no stray "false" where it would be.
        expect(page.get_by_test_id("series-detail")).not_to_contain_text("false")
        page.screenshot(path=str(shots / "01-console-series.png"), full_page=True)

        statuses: list[tuple[int, str]] = []
        errors: list[str] = []
        with page.context.expect_page() as opened:
            link.click()
        ohif = opened.value
        ohif.on("response", lambda r: statuses.append((r.status, r.url)) if "/dicomweb/" in r.url else None)
        ohif.on("pageerror", lambda exc: errors.append(str(exc)))
        ohif.set_viewport_size({"width": 1600, "height": 900})
        for pane in PANES:
            expect(ohif.locator(f"[data-viewportid={pane}] canvas").first).to_be_visible(timeout=120_000)
        # OHIF's own first-visit notices: the investigational-use banner and the tour.
        ohif.get_by_text("Skip all").click(timeout=60_000)
        ohif.get_by_role("button", name="Confirm and hide").click(timeout=60_000)
        boxes = {pane: ohif.locator(f"[data-viewportid={pane}]").first.bounding_box() for pane in PANES}

        def panes(name: str) -> dict[str, np.ndarray]:
            shot = shots / name
            ohif.screenshot(path=str(shot))
            return {pane: _pane_pixels(shot, boxes[pane]) for pane in PANES}

        # Both panes show the slice (not a black canvas), once their frames have arrived.
        deadline = time.monotonic() + 90
        while True:
            first = panes("02-ohif-side-by-side.png")
            if all(v.std() > 20 for v in first.values()) or time.monotonic() > deadline:
                break
            ohif.wait_for_timeout(1000)
        assert all(v.std() > 20 for v in first.values()), {k: float(v.std()) for k, v in first.items()}
        _wait_for_positions(ohif, "1/4")
        # Scrolling the original pane moves the upscaled one to the same slice (synchronised).
        box = boxes["srnode-original"]
        ohif.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        ohif.mouse.wheel(0, 120)
        _wait_for_positions(ohif, "2/4")
        ohif.wait_for_timeout(1500)  # the frame itself, after the overlay
        after = panes("03-ohif-scrolled-together.png")
        for pane in PANES:
            assert np.abs(after[pane] - first[pane]).mean() > 2, f"{pane} still shows the first slice"
        refused = [(status, url) for status, url in statuses if status >= 400]
        assert not refused, refused
        assert not errors, errors
        browser.close()
