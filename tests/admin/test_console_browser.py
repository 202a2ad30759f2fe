"""The console in real headless Chromium against a real node: log in, change the CT model, run a
series through the node (DCMTK storescu → node → pipeline with its embedded worker), open the
comparison viewer. Screenshots go to test-artifacts/admin/."""
from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from config.loader import parse_config
from dicom_node.admin.service import AdminService
from dicom_node.index.models import Job, JobState
from dicom_node.server import NodeServer
from tests.admin.conftest import ADMIN, READ, auth
from tests.browser import launch_chromium, screenshot_dir
from tests.conftest import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture()
def shots(repo_root: Path) -> Path:
    return screenshot_dir(repo_root, "admin")


@pytest.fixture()
def node(tmp_path: Path) -> Iterator[NodeServer]:
    cfg = {
        "node": {"ae_title": "SRNODE", "host": "127.0.0.1", "port": free_port(),
                 "storage_dir": str(tmp_path / "storage"), "database_url": f"sqlite:///{tmp_path / 'index.db'}",
                 "min_free_disk_mb": 0, "shutdown_grace_s": 2},
        "peers": {"scanner": {"ae_title": "STORESCU", "host": "127.0.0.1", "port": 104}},
        "series": {"stable_after_s": 2, "check_interval_s": 0.5},
        # Two cheap registry models, x2, so the test is about plumbing, not inference time.
        "models": {"bicubic-x2": {"arch": "bicubic", "scale": 2}, "lanczos-x2": {"arch": "lanczos", "scale": 2}},
        "routing": [{"name": "ct", "match": {"modality": "CT"}, "model": "bicubic-x2"}],
        "broker_url": None,
        "worker": {"device": "cpu", "batch_size": 1},
        "admin": {"host": "127.0.0.1", "port": 0, "tokens": {ADMIN: "admin", READ: "read"}},
    }
    server = NodeServer(parse_config(cfg, environ={}))  # the services `srnode serve` starts
    server.start()
    yield server
    server.stop(0)


def _send(node: NodeServer, files: list[Path]) -> None:
    storescu = shutil.which("storescu")
    assert storescu, "DCMTK storescu is not installed (make system-deps)"
    subprocess.run([storescu, "-aet", "STORESCU", "-aec", "SRNODE", "127.0.0.1", str(node.port), *map(str, files)],
                   check=True, timeout=60, capture_output=True)


def _wait_job(http: httpx.Client, timeout_s: float) -> dict:
    deadline = time.monotonic() + timeout_s
    jobs: list[dict] = []
    while time.monotonic() < deadline:
        jobs = http.get("/api/jobs").json()
        if jobs and jobs[0]["state"] in ("done", "failed"):
            return jobs[0]
        time.sleep(0.5)
    raise AssertionError(f"no finished job after {timeout_s} s: {jobs}")


def test_login_change_ct_model_run_series_and_compare(node: NodeServer, ct_dirs: list[Path], shots: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    admin = next(s for s in node.services if isinstance(s, AdminService))
    base = f"http://127.0.0.1:{admin.port}"
    chest = next(d for d in ct_dirs if d.name.startswith("lung-pet-ct-dx"))
    files = sorted(chest.glob("*.dcm"))[12:15]

    with sync_playwright() as p, httpx.Client(base_url=base, headers=auth(READ), timeout=30) as http:
        browser = launch_chromium(p)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        js_errors: list[str] = []
        page.on("pageerror", lambda exc: js_errors.append(str(exc)))
        page.goto(base + "/")

        # Log in: a wrong token is refused, the admin token opens the dashboard.
        page.get_by_test_id("token").fill("wrong")
        page.get_by_test_id("login").click()
        expect(page.get_by_test_id("toast")).to_contain_text("Login failed")
        page.get_by_test_id("token").fill(ADMIN)
        page.get_by_test_id("login").click()
        expect(page.get_by_test_id("dash-queue")).to_be_visible()
        expect(page.get_by_test_id("toast")).to_contain_text("Signed in as admin")
        page.screenshot(path=str(shots / "01-dashboard.png"), full_page=True)

        # Change the model for CT.
        page.get_by_test_id("nav-routing").click()
        page.get_by_test_id("model-select-CT").select_option("lanczos-x2")
        page.get_by_test_id("model-save-CT").click()
        expect(page.get_by_test_id("toast")).to_contain_text("CT now uses lanczos-x2")
        expect(page.get_by_test_id("model-select-CT")).to_have_value("lanczos-x2")
        page.screenshot(path=str(shots / "02-routing-ct-lanczos.png"), full_page=True)
        assert http.get("/api/routing/modalities").json()["CT"]["model"] == "lanczos-x2"

        # Run a series through the node; the pipeline routes it when it is stable.
        _send(node, files)
        job = _wait_job(http, timeout_s=150)
        page.get_by_test_id("nav-jobs").click()
        expect(page.get_by_test_id(f"job-state-{job['id']}")).to_have_text(job["state"])
        page.screenshot(path=str(shots / "03-jobs.png"), full_page=True)
        assert job["state"] == "done", job

        # The comparison viewer: original beside derived, shared window and zoom, swipe, PSNR.
        page.get_by_test_id(f"view-{job['id']}").click()
        expect(page.get_by_test_id("psnr")).to_have_text(re.compile(r"^\d+\.\d\d dB$"), timeout=30_000)
        for which, size in (("source", 512), ("derived", 1024)):
            page.wait_for_function(f"document.querySelector('[data-testid=img-{which}]').naturalWidth === {size}")
        page.screenshot(path=str(shots / "04-viewer-side-by-side.png"), full_page=True)
        before = page.get_by_test_id("img-derived").get_attribute("src")
        page.get_by_role("button", name="lung").click()
        expect(page.get_by_test_id("wl-center")).to_have_value("-600")
        page.wait_for_function(
            f"document.querySelector('[data-testid=img-derived]').src !== {before!r}")
        page.get_by_test_id("zoom").fill("2")
        transforms = page.eval_on_selector_all("[data-testid^=img-]", "els => els.map(e => e.style.transform)")
        assert len(set(transforms)) == 1 and "scale(2)" in transforms[0], transforms
        page.screenshot(path=str(shots / "05-viewer-lung-zoom.png"), full_page=True)
        page.get_by_test_id("mode").click()
        page.get_by_test_id("swipe").fill("30")
        expect(page.get_by_test_id("swipe-pane")).to_be_visible()
        page.screenshot(path=str(shots / "06-viewer-swipe.png"), full_page=True)

        # The other pages render from the same API: peers (C-ECHO to a peer that is not
        # listening fails visibly), models, series, audit (the routing change, by whom).
        page.get_by_test_id("nav-peers").click()
        page.get_by_test_id("echo-scanner").click()
        expect(page.get_by_test_id("echo-result-scanner")).to_contain_text("failed")
        page.screenshot(path=str(shots / "07-peers-echo.png"), full_page=True)
        page.get_by_test_id("nav-models").click()
        expect(page.get_by_test_id("models-table")).to_contain_text("lanczos-x2")
        page.get_by_test_id("nav-series").click()
        expect(page.get_by_test_id("series-table")).to_contain_text(f"derived (job {job['id']})")
        page.screenshot(path=str(shots / "08-series.png"), full_page=True)
        page.get_by_test_id("nav-audit").click()
        expect(page.get_by_test_id("audit-table")).to_contain_text("config.set.routing")
        page.screenshot(path=str(shots / "09-audit.png"), full_page=True)
        # Retry from the console: a failed job goes back to the pipeline and finishes again.
        with node.session_factory() as session, session.begin():
            failed = session.get(Job, job["id"])
            failed.state, failed.error = JobState.failed, "simulated failure for the retry test"
        page.get_by_test_id("nav-jobs").click()
        page.get_by_test_id(f"retry-{job['id']}").click()
        expect(page.get_by_test_id(f"job-state-{job['id']}")).to_have_text("done", timeout=90_000)
        page.get_by_test_id("nav-dashboard").click()
        expect(page.get_by_test_id("dash-jobs")).to_contain_text("done1")
        page.screenshot(path=str(shots / "10-dashboard-after.png"), full_page=True)
        browser.close()
        assert js_errors == []

        psnr = http.get(f"/api/jobs/{job['id']}/slices/1/psnr").json()["psnr_db"]
        assert psnr > 30, psnr
        # The model chosen in the console ran on the next series, without a restart.
        assert job["model"] == "lanczos-x2", f"the series was processed with {job['model']!r}"
