"""The reader study in real headless Chromium: an admin defines a study on real CT slices stored
through the node's ingest function (three models: bicubic, lanczos, a Real-ESRGAN checkpoint), two
reader accounts rank every case with the keyboard, the results page shows the mean ranks this test
computes itself from the stored answers. Every response the readers' pages receive before the
study closes is checked for model identities. Screenshots go to test-artifacts/reader_study/."""
from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.admin import create_app
from dicom_node.admin.service import AdminService
from dicom_node.index.live_config import LiveConfig
from dicom_node.index.models import ReaderStudyAnswer, ReaderStudyCandidate, ReaderStudyCase
from tests.browser import launch_chromium, screenshot_dir
from tests.reader_study.conftest import ADMIN, MODELS, READERS, fp

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture()
def shots(repo_root: Path) -> Path:
    return screenshot_dir(repo_root, "reader_study")


@pytest.fixture()
def base_url(live: LiveConfig, sessions: sessionmaker[Session]) -> Iterator[str]:
    service = AdminService(create_app(live, sessions), "127.0.0.1", 0)
    service.start()
    yield f"http://127.0.0.1:{service.port}"
    service.stop()


def _forbidden_words(sessions: sessionmaker[Session], ct_dirs: list[Path]) -> list[str]:
    """Model identities (names, archs, checkpoint digests) and patient identity of the source files."""
    with sessions() as s:
        digests = set(s.execute(select(ReaderStudyCandidate.checkpoint_sha256)).scalars())
    chest = next(d for d in ct_dirs if d.name.startswith("lung-pet-ct-dx"))
    ds = pydicom.dcmread(sorted(chest.glob("*.dcm"))[12], stop_before_pixels=True)
    patient = [str(ds.get("PatientName", "")), str(ds.get("PatientID", "")), str(ds.SOPInstanceUID),
               str(ds.SeriesInstanceUID)]
    return [*MODELS, "realesrgan", "lanczos", "bicubic", *digests, *[p for p in patient if len(p) > 3]]


def _mean_ranks_from_db(sessions: sessionmaker[Session], study_id: int) -> dict[str, float]:
    """Independent of the results code: newest answer per (case, reader), rank = place in the list."""
    with sessions() as s:
        model_of = {c.id: c.model for c in s.execute(select(ReaderStudyCandidate).join(ReaderStudyCase)
                                                     .where(ReaderStudyCase.study_id == study_id)).scalars()}
        latest: dict[tuple[int, str], list[int]] = {}
        for a in s.execute(select(ReaderStudyAnswer).where(ReaderStudyAnswer.study_id == study_id)
                           .order_by(ReaderStudyAnswer.answered_at, ReaderStudyAnswer.id)).scalars():
            latest[(a.case_id, a.reader)] = json.loads(a.ranking_json)
    ranks: dict[str, list[int]] = {m: [] for m in MODELS}
    for ranking in latest.values():
        for place, cid in enumerate(ranking, 1):
            ranks[model_of[cid]].append(place)
    return {m: float(np.mean(v)) for m, v in ranks.items()}


def test_study_two_readers_rank_every_case_results_match(
    base_url: str, stored_slices: list[str], sessions: sessionmaker[Session], ct_dirs: list[Path], shots: Path
) -> None:
    from playwright.sync_api import expect, sync_playwright

    rng = np.random.default_rng(20261130)
    with sync_playwright() as p:
        browser = launch_chromium(p)
        js_errors: list[str] = []

        # --- the admin defines the study in the console ------------------------------------------
        admin = browser.new_page(viewport={"width": 1400, "height": 1100})
        admin.on("pageerror", lambda exc: js_errors.append(f"admin: {exc}"))
        admin.on("dialog", lambda d: d.accept())
        admin.goto(base_url + "/")
        admin.get_by_test_id("token").fill(ADMIN)
        admin.get_by_test_id("login").click()
        expect(admin.get_by_test_id("nav-study")).to_be_visible()
        admin.get_by_test_id("nav-study").click()
        expect(admin.get_by_test_id("study-form")).to_be_visible()
        admin.get_by_test_id("study-name").fill("Chest CT x4 (test)")
        series_uid = admin.eval_on_selector("[data-testid=study-series] option:nth-child(2)", "o => o.value")
        admin.get_by_test_id("study-series").select_option(series_uid)
        for i in range(3):
            admin.get_by_test_id(f"slice-{i}").check()
        admin.get_by_test_id("study-crop").fill("128")
        for m in MODELS:
            admin.get_by_test_id(f"model-{m}").check()
        for token in READERS:
            admin.get_by_test_id(f"reader-{fp(token)}").check()
        admin.get_by_test_id("study-gt").check()
        admin.screenshot(path=str(shots / "01-define-study.png"), full_page=True)
        admin.get_by_test_id("study-create").click()
        expect(admin.get_by_test_id("toast")).to_contain_text("created")
        study_id = int(re.search(r"Study (\d+)", admin.get_by_test_id("toast").inner_text())[1])
        expect(admin.get_by_test_id(f"study-state-{study_id}")).to_have_text("open", timeout=120_000)
        admin.screenshot(path=str(shots / "02-study-open.png"), full_page=True)

        # --- two readers rank every case ------------------------------------------------------------
        forbidden = _forbidden_words(sessions, ct_dirs)
        seen_bodies: list[tuple[str, str]] = []
        for r, token in enumerate(READERS):
            ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
            page = ctx.new_page()
            page.on("pageerror", lambda exc: js_errors.append(f"reader: {exc}"))
            responses = []
            # A lambda, not `responses.append`: Playwright cannot wrap a builtin method as a handler.
            page.on("response", lambda resp, responses=responses: responses.append(resp))
            page.goto(base_url + "/reading.html")
            page.get_by_test_id("reader-token").fill(token)
            page.get_by_test_id("reader-login").click()
            page.get_by_test_id(f"open-{study_id}").click()
            for k in range(1, 4):
                expect(page.get_by_test_id("progress")).to_have_text(f"Case {k} of 3")
                expect(page.get_by_test_id("pane-reference")).to_be_visible()
                labels = page.eval_on_selector_all("[data-testid=candidates] .label",
                                                   "els => els.map(e => e.firstChild.textContent)")
                assert labels == ["Reference", "A", "B", "C"], labels
                page.wait_for_function("[...document.querySelectorAll('[data-testid^=img-]')]"
                                       ".every(i => i.complete && i.naturalWidth === 128)")
                if r == 0 and k == 1:
                    # Synchronised presets and zoom for all panes.
                    before = page.get_by_test_id("img-A").get_attribute("src")
                    page.get_by_test_id("preset-lung").click()
                    expect(page.get_by_test_id("wl-center")).to_have_value("-600")
                    page.wait_for_function(f"document.querySelector('[data-testid=img-A]').src !== {before!r}")
                    page.get_by_test_id("zoom").fill("2")
                    transforms = page.eval_on_selector_all("[data-testid^=img-]",
                                                           "els => els.map(e => e.style.transform)")
                    assert len(set(transforms)) == 1 and "scale(2)" in transforms[0], transforms
                    box = page.get_by_test_id("pane-B").bounding_box()
                    page.mouse.move(box["x"] + 100, box["y"] + 100)
                    page.mouse.down()
                    page.mouse.move(box["x"] + 140, box["y"] + 70, steps=4)
                    page.mouse.up()
                    transforms = page.eval_on_selector_all("[data-testid^=img-]",
                                                           "els => els.map(e => e.style.transform)")
                    assert len(set(transforms)) == 1 and "translate(40px, -30px)" in transforms[0], transforms
                order = list(rng.permutation(["A", "B", "C"]))
                for letter in order[:2]:  # the last one is placed by itself
                    page.keyboard.press(letter.lower())
                expect(page.get_by_test_id("ranking")).to_have_text(f"1. {order[0]}  2. {order[1]}  3. {order[2]}")
                if k == 1:
                    page.screenshot(path=str(shots / f"03-reader{r + 1}-case1.png"), full_page=True)
                page.keyboard.press("Enter")
                if r == 1 and k == 1:
                    # Resumable: a fresh visit continues at the first unanswered case.
                    expect(page.get_by_test_id("progress")).to_have_text("Case 2 of 3")
                    page.goto(base_url + "/reading.html#/")
                    expect(page.get_by_test_id(f"open-{study_id}")).to_have_text("Continue")
                    page.get_by_test_id(f"open-{study_id}").click()
            expect(page.get_by_test_id("done")).to_contain_text("All 3 cases answered")
            page.screenshot(path=str(shots / f"04-reader{r + 1}-done.png"), full_page=True)
            for resp in responses:
                kind = resp.headers.get("content-type", "")
                if not kind.startswith("image/"):
                    seen_bodies.append((resp.url, resp.text()))
            ctx.close()

        # Model identity (and patient identity) never reached the readers' browsers.
        api_bodies = [b for b in seen_bodies if "/api/reading/" in b[0]]
        assert len(api_bodies) >= 10, [u for u, _ in seen_bodies]
        for url, body in seen_bodies:
            leaked = [w for w in forbidden if w and w.lower() in body.lower()]
            assert not leaked, (url, leaked)

        # --- results: close, then the results page shows the independently computed mean ranks -----
        admin.reload()
        expect(admin.get_by_test_id(f"close-{study_id}")).to_be_visible()
        admin.get_by_test_id(f"close-{study_id}").click()
        expect(admin.get_by_test_id(f"study-state-{study_id}")).to_have_text("closed")
        admin.get_by_test_id(f"results-{study_id}").click()
        expect(admin.get_by_test_id("results-table")).to_be_visible()
        admin.wait_for_function("document.querySelector('[data-testid=results-chart]').naturalWidth > 0")
        expected = _mean_ranks_from_db(sessions, study_id)
        assert sum(expected.values()) == pytest.approx(6.0)  # ranks 1..3 average to 2 per model
        for m in MODELS:
            cell = admin.get_by_test_id(f"mean-{m}-128to512").inner_text()
            shown = float(cell.split()[0])
            assert shown == pytest.approx(expected[m], abs=0.005), (m, cell, expected)
            lo, hi = map(float, re.search(r"\(([\d.]+)–([\d.]+)\)", cell).groups())
            assert lo <= shown <= hi
        expect(admin.get_by_test_id("kendall-128to512")).to_contain_text("Kendall's W")
        admin.screenshot(path=str(shots / "05-results.png"), full_page=True)
        with admin.expect_download() as dl:
            admin.get_by_test_id("export-csv").click()
        csv_path = shots / "results.csv"
        dl.value.save_as(csv_path)
        assert all(m in csv_path.read_text() for m in MODELS)
        with admin.expect_download() as dl:
            admin.get_by_test_id("export-png").click()
        dl.value.save_as(shots / "results.png")
        assert (shots / "results.png").read_bytes()[:4] == b"\x89PNG"

        # After closing, a reader may see which model was which.
        ctx = browser.new_context()
        page = ctx.new_page()
        page.goto(base_url + f"/reading.html#/study/{study_id}/1")
        page.get_by_test_id("reader-token").fill(READERS[0])
        page.get_by_test_id("reader-login").click()
        expect(page.get_by_test_id("closed")).to_be_visible()
        expect(page.get_by_test_id("candidates")).to_contain_text("esrgan-anime")
        page.screenshot(path=str(shots / "06-reader-after-close.png"), full_page=True)
        browser.close()
    assert js_errors == []


def test_pairwise_reading_with_keyboard(base_url: str, stored_slices: list[str],
                                        sessions: sessionmaker[Session]) -> None:
    """Pairwise task: one key picks the better of two; the stored answer puts that candidate first."""
    import httpx
    from playwright.sync_api import expect, sync_playwright

    from tests.reader_study.conftest import auth, wait_open

    with httpx.Client(base_url=base_url, headers=auth(ADMIN), timeout=30) as http:
        body = {"name": "pairs", "slices": stored_slices[:2], "crop": 32, "task": "pairwise",
                "models": ["bicubic", "lanczos"], "readers": [fp(READERS[0])]}
        sid = http.post("/api/reader-studies", json=body).json()["id"]
        wait_open(http.get, sid)
    with sync_playwright() as p:
        browser = launch_chromium(p)
        page = browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(base_url + f"/reading.html#/study/{sid}/1")
        page.get_by_test_id("reader-token").fill(READERS[0])
        page.get_by_test_id("reader-login").click()
        for k, letter in ((1, "B"), (2, "A")):
            expect(page.get_by_test_id("progress")).to_have_text(f"Case {k} of 2")
            expect(page.get_by_test_id("submit")).to_be_disabled()
            page.keyboard.press(letter.lower())
            expect(page.get_by_test_id("ranking")).to_have_text(f"better: {letter}")
            page.keyboard.press("Enter")
        expect(page.get_by_test_id("done")).to_be_visible()
        browser.close()
    assert errors == []
    with sessions() as s:
        answers = s.execute(select(ReaderStudyAnswer).where(ReaderStudyAnswer.study_id == sid)
                            .order_by(ReaderStudyAnswer.id)).scalars().all()
    # Case 1: B (display position 2) won; case 2: A (position 1) won.
    assert [json.loads(a.ranking_json)[0] == json.loads(a.display_order_json)[i]
            for a, i in zip(answers, (1, 0))] == [True, True]
