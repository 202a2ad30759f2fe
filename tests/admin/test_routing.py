"""Routing page API: versions (409 on a stale save), the general rule per modality, stable names."""
from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from config.loader import parse_config
from dicom_node.admin import create_app
from dicom_node.index.live_config import LiveConfig
from dicom_node.routing import SeriesFacts, select_rule
from tests.admin.conftest import ADMIN, READ, auth, base_config

LUNG = {"name": "lung-on-demand", "match": {"modality": "CT", "series_description": "LUNG"}, "model": "bicubic",
        "on_demand": True}
GENERAL = {"name": "ct", "match": {"modality": "CT"}, "model": "bicubic", "destinations": ["pacs"]}


def _client_with(tmp_path: Path, sessions: sessionmaker[Session], routing: list[dict]) -> TestClient:
    cfg = parse_config(base_config(tmp_path, routing=routing), environ={})
    return TestClient(create_app(LiveConfig(cfg, sessions, ttl_s=0.0), sessions))


def test_a_save_based_on_an_old_version_is_refused(client: TestClient, live: LiveConfig) -> None:
    r = client.get("/api/routing", headers=auth(READ))
    etag = r.headers["ETag"]
    state = client.get("/api/routing/state", headers=auth(READ)).json()
    assert etag == f'"{state["version"]}"'
    # One panel applies CT -> lanczos; the other still holds the rules it loaded before.
    r = client.put(f"/api/routing/modalities/CT?version={state['version']}", json={"model": "lanczos"},
                   headers=auth(ADMIN))
    assert r.status_code == 200, r.text
    assert r.json()["version"] != state["version"]
    stale = [{**state["rules"][0], "priority": "stat"}]
    r = client.put("/api/routing", json=stale, headers={**auth(ADMIN), "If-Match": etag})
    assert r.status_code == 409, r.text
    assert "changed by admin:" in r.json()["detail"] and "nothing was saved" in r.json()["detail"]
    assert live.current().routing[0].model == "lanczos"  # the first change stands
    # Based on the version in force the save goes through (and returns the next version).
    fresh = client.get("/api/routing", headers=auth(READ))
    r = client.put("/api/routing", json=fresh.json(), headers={**auth(ADMIN), "If-Match": fresh.headers["ETag"]})
    assert r.status_code == 200 and r.headers["ETag"] == fresh.headers["ETag"]
    # Without a version (scripts written before versions) the save is taken as before.
    assert client.put("/api/routing", json=stale, headers=auth(ADMIN)).status_code == 200


def test_model_for_ct_edits_the_general_rule_not_a_narrow_one(tmp_path: Path,
                                                              sessions: sessionmaker[Session]) -> None:
    with _client_with(tmp_path, sessions, [LUNG, GENERAL]) as c:
        shown = c.get("/api/routing/modalities", headers=auth(READ)).json()["CT"]
        assert (shown["rule"], shown["match"], shown["other_rules"]) == ("ct", "modality: CT", ["lung-on-demand"])
        r = c.put("/api/routing/modalities/CT", json={"model": "lanczos"}, headers=auth(ADMIN))
        assert r.status_code == 200, r.text
        assert (r.json()["rule"], r.json()["created"]) == ("ct", False)
        rules = c.get("/api/routing", headers=auth(READ)).json()
    assert [(r["name"], r["model"]) for r in rules] == [("lung-on-demand", "bicubic"), ("ct", "lanczos")]


def test_model_for_ct_creates_a_general_rule_when_only_narrow_ones_exist(tmp_path: Path,
                                                                         sessions: sessionmaker[Session]) -> None:
    narrow = {**LUNG, "on_demand": False, "destinations": ["pacs"]}
    with _client_with(tmp_path, sessions, [narrow]) as c:
        shown = c.get("/api/routing/modalities", headers=auth(READ)).json()["CT"]
        assert shown["rule"] is None and shown["other_rules"] == ["lung-on-demand"]
        r = c.put("/api/routing/modalities/ct", json={"model": "lanczos"}, headers=auth(ADMIN))
        assert r.status_code == 200, r.text
        assert (r.json()["rule"], r.json()["match"], r.json()["created"]) == ("ct-general", "modality: CT", True)
        live = c.app.state.live
    # An ordinary CT series now runs lanczos; a LUNG series still gets its own rule's model.
    ordinary = select_rule(live.current().routing, SeriesFacts(modality="CT", series_description="ABDOMEN"))
    lung = select_rule(live.current().routing, SeriesFacts(modality="CT", series_description="LUNG 1mm"))
    assert ordinary is not None and (ordinary[1].name, ordinary[1].model) == ("ct-general", "lanczos")
    assert ordinary[1].destinations == ["pacs"]
    assert lung is not None and (lung[1].name, lung[1].model) == ("lung-on-demand", "bicubic")


def test_rule_names_are_stable_and_unique(tmp_path: Path, sessions: sessionmaker[Session]) -> None:
    unnamed = {"match": {"modality": "MR"}, "model": "bicubic"}
    with _client_with(tmp_path, sessions, [GENERAL, unnamed]) as c:
        names = [r["name"] for r in c.get("/api/routing/state", headers=auth(READ)).json()["shown"]]
        assert names == ["ct", "rule-1"]  # unnamed: its position, as recorded on its jobs
        # A rule inserted above a named one does not rename it.
        r = c.put("/api/routing", json=[LUNG, GENERAL, {**unnamed, "name": "mr"}], headers=auth(ADMIN))
        assert r.status_code == 200, r.text
        shown = c.get("/api/routing/state", headers=auth(READ)).json()["shown"]
        assert [(s["name"], s["match"]) for s in shown] == [
            ("lung-on-demand", "modality: CT, series_description: LUNG"), ("ct", "modality: CT"),
            ("mr", "modality: MR")]
        r = c.put("/api/routing", json=[GENERAL, {**unnamed, "name": "CT"}], headers=auth(ADMIN))
        assert r.status_code == 422 and r.json()["keys"] == ["routing.1.name"], r.text
        # A name that collides with another rule's position name is refused too.
        r = c.put("/api/routing", json=[{**GENERAL, "name": "rule-1"}, unnamed], headers=auth(ADMIN))
        assert r.status_code == 422 and r.json()["keys"] == ["routing.1.name"], r.text


@pytest.mark.parametrize("name", ["", "a" * 65, "has/slash"])
def test_rule_names_are_checked_like_the_file(client: TestClient, name: str) -> None:
    r = client.put("/api/routing", json=[{**GENERAL, "name": name}], headers=auth(ADMIN))
    assert r.status_code == 422 and r.json()["keys"] == ["routing.0.name"], r.text


def test_per_modality_change_and_json_edit_read_differently_in_the_audit(client: TestClient) -> None:
    assert client.put("/api/routing/modalities/CT", json={"model": "lanczos"}, headers=auth(ADMIN)).status_code == 200
    rules = client.get("/api/routing", headers=auth(READ)).json()
    mr_all = {"name": "mr-all", "match": {"modality": "MR"}, "model": "bicubic"}
    assert client.put("/api/routing", json=[*rules, mr_all], headers=auth(ADMIN)).status_code == 200
    changes = [a["change"] for a in client.get("/api/audit?action=config.set.routing", headers=auth(READ)).json()]
    assert [c["how"] for c in changes] == ["json", "per-modality"]  # newest first
    assert changes[1]["after"] == {"0": {"model": "lanczos"}}  # only what changed
    assert changes[0]["after"][-1]["name"] == "mr-all"  # a rule added: the lists differ in length, shown whole
