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
from dicom_node.wiring import build_node
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
    server = build_node(parse_config(cfg, environ={}))  # the services `srnode serve` starts
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
        expect(page.get_by_test_id("dash-jobs")).to_contain_text("Done1")  # label "Done", count 1
        page.screenshot(path=str(shots / "10-dashboard-after.png"), full_page=True)
        browser.close()
        assert js_errors == []

        psnr = http.get(f"/api/jobs/{job['id']}/slices/1/psnr").json()["psnr_db"]
        assert psnr > 30, psnr
        # The model chosen in the console ran on the next series, without a restart.
        assert job["model"] == "lanczos-x2", f"the series was processed with {job['model']!r}"


@pytest.fixture()
def console(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """The admin API and console alone (no DICOM side) over a node.yaml and a migrated SQLite index;
    yields the base URL and the config file (a restart is a new LiveConfig over the same database)."""
    import yaml

    from config.loader import load_config
    from dicom_node.admin import create_app
    from dicom_node.index.db import make_engine, session_factory
    from dicom_node.index.live_config import LiveConfig
    from dicom_node.index.migrate import upgrade

    cfg_file = tmp_path / "node.yaml"
    cfg_file.write_text(yaml.safe_dump({
        "node": {"storage_dir": str(tmp_path / "storage"), "database_url": f"sqlite:///{tmp_path / 'index.db'}"},
        "models": {"bicubic-x2": {"arch": "bicubic", "scale": 2}, "lanczos-x2": {"arch": "lanczos", "scale": 2}},
        "routing": [{"name": "lung", "match": {"modality": "CT", "series_description": "LUNG"},
                     "model": "bicubic-x2", "on_demand": True},
                    {"name": "ct", "match": {"modality": "CT"}, "model": "bicubic-x2"}],
        "admin": {"tokens": {ADMIN: "admin", READ: "read"}},
    }))
    cfg = load_config(cfg_file)
    engine = make_engine(cfg.node.database_url)
    upgrade(cfg.node.database_url, engine=engine)
    sessions = session_factory(engine)
    service = AdminService(create_app(LiveConfig(cfg, sessions), sessions), "127.0.0.1", 0)
    service.start()
    yield f"http://127.0.0.1:{service.port}", cfg_file
    service.stop()
    engine.dispose()


def _sign_in(page: object, base: str) -> None:
    page.goto(base + "/#/routing")  # type: ignore[attr-defined]
    page.get_by_test_id("token").fill(ADMIN)  # type: ignore[attr-defined]
    page.get_by_test_id("login").click()  # type: ignore[attr-defined]


def test_routing_page_keeps_one_state_and_refuses_a_stale_save(console: tuple[str, Path], shots: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    base, _ = console
    with sync_playwright() as p, httpx.Client(base_url=base, headers=auth(READ), timeout=30) as http:
        browser = launch_chromium(p)
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        js_errors: list[str] = []
        page.on("pageerror", lambda exc: js_errors.append(str(exc)))
        _sign_in(page, base)
        # "Model for CT" is the general rule's, not the narrow LUNG one above it; both show their match.
        expect(page.get_by_test_id("modality-rule-CT")).to_have_text("ct modality: CT")
        expect(page.get_by_test_id("rules-table")).to_contain_text("modality: CT, series_description: LUNG")
        expect(page.get_by_test_id("model-save-CT")).to_have_text("Apply to ct")

        # The lost update of issue 17: Apply a model, then edit the JSON and save it.
        page.get_by_test_id("model-select-CT").select_option("lanczos-x2")
        page.get_by_test_id("model-save-CT").click()
        expect(page.get_by_test_id("toast")).to_contain_text("CT now uses lanczos-x2 (rule ct)")
        expect(page.get_by_test_id("rules-json")).to_have_value(re.compile(r'"model": "lanczos-x2"'))
        edited = page.get_by_test_id("rules-json").input_value().replace('"name": "lung"', '"name": "lung-demand"')
        page.get_by_test_id("rules-json").fill(edited)
        page.get_by_test_id("rules-save").click()
        expect(page.get_by_test_id("toast")).to_have_text("Rules saved")
        expect(page.get_by_test_id("rule-name-0")).to_have_text("lung-demand")
        page.screenshot(path=str(shots / "11-routing-one-state.png"), full_page=True)
        rules = http.get("/api/routing").json()
        assert [(r["name"], r["model"]) for r in rules] == [("lung-demand", "bicubic-x2"), ("ct", "lanczos-x2")]

        # A second console (another admin) changes CT meanwhile: this page's JSON save is refused.
        other = browser.new_page()
        _sign_in(other, base)
        other.get_by_test_id("model-select-CT").select_option("bicubic-x2")
        other.get_by_test_id("model-save-CT").click()
        expect(other.get_by_test_id("toast")).to_contain_text("CT now uses bicubic-x2")
        page.get_by_test_id("rules-json").fill(page.get_by_test_id("rules-json").input_value()
                                               .replace('"priority": "routine"', '"priority": "stat"', 1))
        page.get_by_test_id("rules-save").click()
        expect(page.get_by_test_id("toast")).to_contain_text("409: the routing rules were changed by admin:")
        page.screenshot(path=str(shots / "12-routing-stale-save-refused.png"), full_page=True)
        assert [r["model"] for r in http.get("/api/routing").json()] == ["bicubic-x2", "bicubic-x2"]
        assert all(r["priority"] == "routine" for r in http.get("/api/routing").json())
        browser.close()
    assert js_errors == []


def test_override_banner_lists_reports_and_reverts(console: tuple[str, Path], shots: Path) -> None:
    import yaml
    from playwright.sync_api import expect, sync_playwright

    from config.loader import load_config
    from dicom_node.admin import create_app
    from dicom_node.index.db import make_engine, session_factory
    from dicom_node.index.live_config import LiveConfig, read_overrides

    base, cfg_file = console
    with httpx.Client(base_url=base, headers=auth(ADMIN), timeout=30) as http:
        assert http.put("/api/routing/modalities/CT", json={"model": "lanczos-x2"}).status_code == 200
    # The operator edits the file's CT rule afterwards; the override, made before, still wins.
    data = yaml.safe_load(cfg_file.read_text())
    data["routing"][1]["scale"] = 2
    cfg_file.write_text(yaml.safe_dump(data))
    # Restart: a new LiveConfig over the edited file and the same database.
    cfg = load_config(cfg_file)
    engine = make_engine(cfg.node.database_url)
    restarted = LiveConfig(cfg, session_factory(engine))
    assert [o.file_changed for o in restarted.overrides()] == [True]
    service = AdminService(create_app(restarted, session_factory(engine)), "127.0.0.1", 0)
    service.start()
    base = f"http://127.0.0.1:{service.port}"
    try:
        with sync_playwright() as p:
            browser = launch_chromium(p)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            js_errors: list[str] = []
            page.on("pageerror", lambda exc: js_errors.append(str(exc)))
            page.on("dialog", lambda dialog: dialog.accept())
            _sign_in(page, base)
            banner = page.get_by_test_id("overrides-banner")
            expect(banner).to_contain_text("Console changes override node.yaml for: routing.")
            expect(page.get_by_test_id("overrides-file-changed")).to_contain_text(
                "edited under the override of routing")
            expect(page.get_by_test_id("model-select-CT")).to_have_value("lanczos-x2")
            page.screenshot(path=str(shots / "13-override-banner.png"), full_page=True)
            page.get_by_test_id("revert-routing").click()
            expect(page.get_by_test_id("toast")).to_contain_text("routing: the file's value is in force")
            expect(banner).to_be_hidden()
            expect(page.get_by_test_id("model-select-CT")).to_have_value("bicubic-x2")  # the page re-rendered
            page.screenshot(path=str(shots / "14-override-reverted.png"), full_page=True)
            browser.close()
        assert js_errors == []
        assert read_overrides(session_factory(engine), cfg) == []
    finally:
        service.stop()
        engine.dispose()
