"""The operator's view of retention: GET /api/storage, protect/unprotect (audited, admin only, 409
while recycling), recycled series in the series API, and `srnode storage status|purge --dry-run`;
on an archive of real CT files."""
from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient
from sqlalchemy import select

from config.loader import parse_config
from config.schema import RetentionConfig
from dicom_node.admin import create_app
from dicom_node.index.live_config import LiveConfig
from dicom_node.index.models import Audit, Series, utcnow
from dicom_node.retention.recycler import run_pass
from dicom_node.retention.usage import usage_by_kind
from tests.admin.conftest import ADMIN, READ, auth, base_config
from tests.conftest import REPO_ROOT
from tests.retention.conftest import Archive

RETENTION = {"quota_mb": 0.001, "keep_after_delivery_h": 0}  # everything eligible goes


@pytest.fixture
def api(archive: Archive, tmp_path: Path) -> Iterator[TestClient]:
    cfg = parse_config(base_config(tmp_path, retention=RETENTION), environ={})
    with TestClient(create_app(LiveConfig(cfg, archive.factory, ttl_s=0.0), archive.factory)) as client:
        yield client


def series_uid(archive: Archive, pk: int) -> str:
    with archive.factory() as s:
        return str(s.get(Series, pk).series_uid)  # type: ignore[union-attr]


def audits(archive: Archive, action: str) -> list[Audit]:
    with archive.factory() as s:
        return list(s.scalars(select(Audit).where(Audit.action == action)))


def test_status_and_protect_unprotect(api: TestClient, archive: Archive) -> None:
    _, _, derived = archive.pipeline()
    uid = series_uid(archive, derived)
    st = api.get("/api/storage", headers=auth(READ)).json()
    with archive.factory() as s:
        assert st["by_kind"] == usage_by_kind(s) and st["used_bytes"] == sum(st["by_kind"].values()) > 0
    assert st["eligible"]["series"] == 1 and st["protected"]["series"] == 0 and st["refusing"] == ""

    assert api.post(f"/api/series/{uid}/protect", headers=auth(ADMIN)).json()["protected"] is True
    assert api.get(f"/api/storage/series/{uid}", headers=auth(READ)).json() == {
        "series_uid": uid, "protected": True, "eligible": False}
    st = api.get("/api/storage", headers=auth(READ)).json()
    assert st["protected"]["series"] == 1 and st["eligible"]["series"] == 0
    # Above the quota with the only candidate protected: the node says it refuses, and why.
    assert "no series is eligible" in st["refusing"]
    listed = {r["series_uid"]: r["protected"] for r in api.get("/api/series", headers=auth(READ)).json()}
    assert listed[uid] is True and list(listed.values()).count(True) == 1

    assert api.post(f"/api/series/{uid}/unprotect", headers=auth(ADMIN)).json()["protected"] is False
    assert api.get(f"/api/storage/series/{uid}", headers=auth(READ)).json()["eligible"] is True
    assert [a.actor.split(":")[0] for a in audits(archive, "series.protect")] == ["admin"]
    assert "protected True -> False" in audits(archive, "series.unprotect")[0].detail
    assert api.post("/api/series/1.2.3.4/protect", headers=auth(ADMIN)).status_code == 404


def test_read_role_cannot_protect(api: TestClient, archive: Archive) -> None:
    _, _, derived = archive.pipeline()
    uid = series_uid(archive, derived)
    assert api.post(f"/api/series/{uid}/protect", headers=auth(READ)).status_code == 403
    with archive.factory() as s:
        assert s.get(Series, derived).protected is False  # type: ignore[union-attr]
    assert audits(archive, "series.protect") == []


def test_protect_while_recycling_is_409(api: TestClient, archive: Archive) -> None:
    _, _, derived = archive.pipeline()
    with archive.factory.begin() as s:
        s.get(Series, derived).recycling_at = utcnow()  # type: ignore[union-attr]
    r = api.post(f"/api/series/{series_uid(archive, derived)}/protect", headers=auth(ADMIN))
    assert r.status_code == 409 and "being recycled" in r.json()["detail"]
    assert audits(archive, "series.protect") == []


def test_recycled_history_rows_only_when_asked(api: TestClient, archive: Archive) -> None:
    src, _, _ = archive.pipeline()
    kept_src, _, kept = archive.pipeline()
    with archive.factory.begin() as s:
        s.get(Series, kept).protected = True  # type: ignore[union-attr]
    run_pass(archive.factory, archive.storage, RetentionConfig(**RETENTION))
    uid, kept_uid = series_uid(archive, src), series_uid(archive, kept)  # src stays as its job's parent
    listed = {r["series_uid"]: r for r in api.get("/api/series", headers=auth(READ)).json()}
    assert set(listed) == {kept_uid, series_uid(archive, kept_src)}
    assert listed[kept_uid]["protected"] is True and listed[kept_uid]["recycled_at"] is None
    assert api.get(f"/api/series/{uid}", headers=auth(READ)).status_code == 404
    history = {r["series_uid"]: r for r in api.get("/api/series?recycled=true", headers=auth(READ)).json()}
    assert history[uid]["recycled_at"] and history[uid]["instances"] == 0
    one = api.get(f"/api/series/{uid}?recycled=true", headers=auth(READ)).json()
    assert one["recycled_at"] and len(one["jobs"]) == 1


def srnode_storage(archive: Archive, tmp_path: Path, *args: str) -> str:
    config = tmp_path / "srnode.yaml"
    config.write_text(yaml.safe_dump({"node": {"storage_dir": str(archive.storage), "database_url": archive.url},
                                      "retention": RETENTION}))
    done = subprocess.run([sys.executable, "-m", "srnode", "storage", *args, "--config", str(config)],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_cli_status_json_and_purge_dry_run(archive: Archive, tmp_path: Path) -> None:
    _, _, derived = archive.pipeline()
    st = json.loads(srnode_storage(archive, tmp_path, "status", "--json"))
    with archive.factory() as s:
        assert st["by_kind"] == usage_by_kind(s) and st["quota_bytes"] == 1048
    assert st["eligible"]["series"] == 1 and st["refusing"] == ""
    files = sorted(archive.storage.rglob("*.dcm"))
    dry = srnode_storage(archive, tmp_path, "purge", "--dry-run").splitlines()
    assert len(dry) == 1 and dry[0].startswith(series_uid(archive, derived)) and "quota:" in dry[0]
    assert sorted(archive.storage.rglob("*.dcm")) == files  # a dry run changes nothing
    assert audits(archive, "series.recycle") == []
