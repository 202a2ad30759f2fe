"""/ohif: OHIF's build moved from "/" to /ohif/, our app-config.js, the single-page fallback, no
files outside the build, and a clear 404 when `make viewer` has not run (a tiny fake build here;
the real one runs in tests/dicomweb/test_ohif_browser.py)."""
from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.testclient import TestClient

from dicom_node.admin.ohif import HANGING_PROTOCOL, mount_ohif, viewer_path

INDEX = ('<html><head><script>window.PUBLIC_URL="/"</script><link rel="manifest" href="/manifest.json">'
         '<script rel="preload" as="script" src="/app-config.js"></script>'
         '<script type="module" src="/init-service-worker.js"></script></head>'
         '<body><script defer src="/app.bundle.0123456789abcdef.js"></script></body></html>')


def _build(tmp_path: Path) -> Path:
    dist = tmp_path / "ohif"
    dist.mkdir()
    (dist / "index.html").write_text(INDEX)
    (dist / "app.bundle.0123456789abcdef.js").write_text('var a=1;__webpack_require__.p = "/";run();')
    (dist / "plain.js").write_text("console.log(1);")
    (dist / "codec.wasm").write_bytes(b"\0asm")
    (tmp_path / "secret.txt").write_text("not part of the build")
    return dist


def test_ohif_is_served_at_its_prefix_with_our_config(tmp_path: Path) -> None:
    app = FastAPI()
    assert mount_ohif(app, _build(tmp_path))
    http = TestClient(app)
    page = http.get("/ohif/viewer", params={"StudyInstanceUIDs": "1.2.3"})
    assert page.status_code == 200 and 'window.PUBLIC_URL="/ohif/"' in page.text
    assert 'src="/ohif/app-config.js"' in page.text and 'href="/ohif/manifest.json"' in page.text
    assert "init-service-worker" not in page.text
    bundle = http.get("/ohif/app.bundle.0123456789abcdef.js")
    assert bundle.text == 'var a=1;__webpack_require__.p = "/ohif/";run();'
    assert "immutable" in bundle.headers["cache-control"]
    assert http.get("/ohif/plain.js").text == "console.log(1);"
    assert http.get("/ohif/codec.wasm").headers["content-type"] == "application/wasm"
    config = http.get("/ohif/app-config.js").text
    assert f"id: '{HANGING_PROTOCOL}'" in config and "routerBasename: '/ohif'" in config
    assert "sessionStorage.getItem('srnode.token')" in config
    # Nothing outside the build: a path that climbs out gets the page, not the file.
    escaped = http.get("/ohif/%2e%2e/secret.txt")
    assert escaped.status_code == 200 and "not part of the build" not in escaped.text
    assert 'window.PUBLIC_URL="/ohif/"' in escaped.text


def test_without_the_build_ohif_answers_404_naming_the_command(tmp_path: Path) -> None:
    app = FastAPI()
    assert not mount_ohif(app, tmp_path / "missing")
    answer = TestClient(app).get("/ohif/viewer")
    assert answer.status_code == 404 and "make viewer" in answer.text


def test_viewer_path_hangs_original_then_upscaled() -> None:
    assert viewer_path("1.2", "1.2.3", "1.2.4") == (
        f"/ohif/viewer?StudyInstanceUIDs=1.2&SeriesInstanceUIDs=1.2.3,1.2.4&hangingProtocolId={HANGING_PROTOCOL}")
