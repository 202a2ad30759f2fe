"""One source of truth: overrides made through the API are listed (API, CLI, start log), a file
edited under an override is reported, and reverting to the file works from the API and the CLI."""
from __future__ import annotations

import logging
import threading
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from config.loader import load_config
from dicom_node.admin import create_app
from dicom_node.index.live_config import LiveConfig, read_overrides
from srnode.cli import main
from tests.admin.conftest import ADMIN, READ, auth, base_config

CT_LANCZOS = {"model": "lanczos"}


def _write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def _app(cfg_file: Path, sessions: sessionmaker[Session]) -> TestClient:
    """The admin app of a node started (again) from `cfg_file`."""
    return TestClient(create_app(LiveConfig(load_config(cfg_file), sessions, ttl_s=0.0), sessions))


def test_overrides_are_listed_and_reverted_to_the_file(client: TestClient, live: LiveConfig) -> None:
    listed = client.get("/api/config/overrides", headers=auth(READ)).json()
    assert [(s["key"], s["source"]) for s in listed] == [
        ("peers", "file"), ("models", "file"), ("routing", "file"), ("output", "file"), ("series", "file")]
    assert client.put("/api/routing/modalities/CT", json=CT_LANCZOS, headers=auth(ADMIN)).status_code == 200
    routing = next(s for s in client.get("/api/config/overrides", headers=auth(READ)).json()
                   if s["key"] == "routing")
    assert (routing["source"], routing["file_changed"]) == ("override", False)
    assert routing["actor"].startswith("admin:") and routing["at"]
    assert routing["value"][0]["model"] == "lanczos" and routing["file_value"][0]["model"] == "bicubic"

    assert client.delete("/api/config/overrides/routing", headers=auth(READ)).status_code == 403
    r = client.delete("/api/config/overrides/routing", headers=auth(ADMIN))
    assert r.status_code == 200, r.text
    assert live.current().routing[0].model == "bicubic"
    assert all(s["source"] == "file" for s in client.get("/api/config/overrides", headers=auth(READ)).json())
    audit = client.get("/api/audit?action=config.revert", headers=auth(READ)).json()
    assert [a["action"] for a in audit] == ["config.revert.routing"]
    assert client.delete("/api/config/overrides/routing", headers=auth(ADMIN)).status_code == 404
    r = client.delete("/api/config/overrides/node", headers=auth(ADMIN))
    assert r.status_code == 422 and r.json()["keys"] == ["node"]


def test_every_override_row_of_a_section_goes(client: TestClient, live: LiveConfig) -> None:
    # Two changes make two rows; reverting must not put the older one in force.
    for model in ("lanczos", "bicubic"):
        assert client.put("/api/routing/modalities/CT", json={"model": model, "scale": 4},
                          headers=auth(ADMIN)).status_code == 200
    assert live.current().routing[0].scale == 4
    assert client.delete("/api/config/overrides/routing", headers=auth(ADMIN)).status_code == 200
    assert live.current().routing[0].scale is None  # the file's rule, not the first change


def test_reverting_what_other_overrides_need_is_refused(client: TestClient, live: LiveConfig) -> None:
    peer = {"ae_title": "RIS", "host": "127.0.0.1", "port": 104}
    assert client.put("/api/peers/ris", json=peer, headers=auth(ADMIN)).status_code == 200
    rules = client.get("/api/routing", headers=auth(READ)).json()
    rules[0]["destinations"] = ["ris"]
    assert client.put("/api/routing", json=rules, headers=auth(ADMIN)).status_code == 200
    r = client.delete("/api/config/overrides/peers", headers=auth(ADMIN))
    assert r.status_code == 422 and "routing.0.destinations" in r.json()["keys"], r.text
    assert "ris" in live.current().peers  # nothing was removed


def test_a_file_edited_under_an_override_is_reported_at_start(tmp_path: Path, sessions: sessionmaker[Session],
                                                                caplog: pytest.LogCaptureFixture) -> None:
    data = base_config(tmp_path)
    cfg_file = _write(tmp_path / "node.yaml", data)
    with _app(cfg_file, sessions) as c:
        assert c.put("/api/routing/modalities/CT", json=CT_LANCZOS, headers=auth(ADMIN)).status_code == 200
    # The operator sets the model in the file and restarts: the console's choice still wins, and says so.
    data["routing"][0]["model"] = "lanczos"
    data["routing"][0]["scale"] = 4
    _write(cfg_file, data)
    caplog.set_level(logging.INFO, logger="dicom_node.index.live_config")
    with _app(cfg_file, sessions) as c:
        c.app.state.live.current()  # the node's first read of its configuration
        routing = next(s for s in c.get("/api/config/overrides", headers=auth(READ)).json() if s["key"] == "routing")
    assert routing["file_changed"] is True
    lines = [r for r in caplog.records if r.name == "dicom_node.index.live_config"]
    assert len(lines) == 1 and lines[0].levelno == logging.WARNING, [r.getMessage() for r in lines]
    message = lines[0].getMessage()
    assert "routing: override by admin:" in message and "the file's value changed" in message
    caplog.clear()
    # Unchanged file: one INFO line per override, nothing about a change.
    with _app(cfg_file, sessions) as c:
        c.delete("/api/config/overrides/routing", headers=auth(ADMIN))
        assert c.put("/api/routing/modalities/CT", json={"model": "bicubic"}, headers=auth(ADMIN)).status_code == 200
    with _app(cfg_file, sessions) as c:
        c.app.state.live.current()
    lines = [r for r in caplog.records if r.name == "dicom_node.index.live_config"]
    assert [r.levelno for r in lines] == [logging.INFO] and "changed" not in lines[0].getMessage()


def test_cli_lists_an_api_override_and_clears_it(tmp_path: Path, sessions: sessionmaker[Session],
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    cfg_file = _write(tmp_path / "node.yaml", base_config(tmp_path))  # the SQLite file of `sessions`
    assert main(["config", "overrides", "--config", str(cfg_file)]) == 0
    assert capsys.readouterr().out.splitlines() == ["no overrides: the file is in force"]
    with _app(cfg_file, sessions) as c:
        assert c.put("/api/routing/modalities/CT", json=CT_LANCZOS, headers=auth(ADMIN)).status_code == 200
        # A newer override of another section: clearing routing then removes rows that are not the newest.
        assert c.put("/api/peers/ris", json={"ae_title": "RIS", "host": "127.0.0.1", "port": 104},
                     headers=auth(ADMIN)).status_code == 200
        live = c.app.state.live
        assert live.current().routing[0].model == "lanczos"
        assert main(["config", "overrides", "--config", str(cfg_file)]) == 0
        out = capsys.readouterr().out.splitlines()
        assert [line.split(": override by admin:")[0] for line in out] == ["peers", "routing"], out
        assert main(["config", "overrides", "--config", str(cfg_file), "--clear", "routing"]) == 0
        assert capsys.readouterr().out.startswith("routing: override by admin:")
        # A running node (its LiveConfig) sees the file's value again without a restart.
        assert live.current().routing[0].model == "bicubic"
    assert main(["config", "overrides", "--config", str(cfg_file)]) == 0
    assert [line.split(":")[0] for line in capsys.readouterr().out.splitlines()] == ["peers"]
    # --clear without a key removes every override.
    with _app(cfg_file, sessions) as c:
        assert c.put("/api/routing/modalities/CT", json=CT_LANCZOS, headers=auth(ADMIN)).status_code == 200
    assert main(["config", "overrides", "--config", str(cfg_file), "--clear"]) == 0
    assert [line.split(":")[0] for line in capsys.readouterr().out.splitlines()] == ["peers", "routing"]
    assert read_overrides(sessions, load_config(cfg_file)) == []
    assert main(["config", "overrides", "--config", str(cfg_file), "--clear", "node"]) == 1
    assert "node: not a section that can be overridden" in capsys.readouterr().err


def test_an_override_the_edited_file_no_longer_fits_does_not_stop_the_node(
        tmp_path: Path, sessions: sessionmaker[Session], caplog: pytest.LogCaptureFixture) -> None:
    data = base_config(tmp_path)
    cfg_file = _write(tmp_path / "node.yaml", data)
    with _app(cfg_file, sessions) as c:
        assert c.put("/api/routing/modalities/CT", json=CT_LANCZOS, headers=auth(ADMIN)).status_code == 200
    # The file drops the peer that the overridden routing sends to.
    data["peers"] = {}
    data["routing"] = []
    _write(cfg_file, data)
    caplog.set_level(logging.INFO, logger="dicom_node.index.live_config")
    live = LiveConfig(load_config(cfg_file), sessions, ttl_s=0.0)
    assert live.current().routing == [] and live.current().routing == []  # the file's, and no exception
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "routing do not validate with the file" in errors[0].getMessage()
    assert "srnode config overrides" in errors[0].getMessage()


class _GatedSessions:
    """The index's sessionmaker, holding the next session opened until `release` is set (a slow read)."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions, self.hold, self.entered, self.release = sessions, False, threading.Event(), threading.Event()

    def __call__(self) -> Session:
        if self.hold:
            self.hold = False
            self.entered.set()
            self.release.wait(10)
        return self.sessions()


def test_a_read_during_a_refresh_waits_for_it_instead_of_answering_the_old_config(
        tmp_path: Path, sessions: sessionmaker[Session]) -> None:
    gated = _GatedSessions(sessions)
    live = LiveConfig(load_config(_write(tmp_path / "node.yaml", base_config(tmp_path))), gated,  # type: ignore[arg-type]
                      ttl_s=60.0)
    assert live.current().routing[0].model == "bicubic"
    rules = live.current().model_dump(mode="json")["routing"]
    live.set_section("routing", [{**rules[0], "model": "lanczos"}], "admin:test")
    gated.hold = True
    answers: dict[str, str | None] = {}
    first = threading.Thread(target=lambda: answers.update(first=live.current().routing[0].model))
    first.start()
    assert gated.entered.wait(5)  # the first reader is inside its database read
    second = threading.Thread(target=lambda: answers.update(second=live.current().routing[0].model))
    second.start()
    second.join(0.3)
    gated.release.set()
    first.join(5)
    second.join(5)
    # Before the fix the second reader answered at once with the cache being replaced (bicubic).
    assert answers == {"first": "lanczos", "second": "lanczos"}
