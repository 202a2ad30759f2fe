"""Admin API over a real, migrated index (SQLite and PostgreSQL): auth, validation, audit, jobs, routing."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.index.live_config import LiveConfig
from dicom_node.index.models import Audit, Job, JobState, Patient, Series, Study
from dicom_node.routing import SeriesFacts, select_rule
from tests.admin.conftest import ADMIN, READ, READER, auth, postgres_database


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Every API test runs on SQLite and on PostgreSQL (own database per test)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'index.db'}"
        return
    with postgres_database() as url:
        yield url


def test_no_token_is_401(client: TestClient) -> None:
    for method, path in (("get", "/api/peers"), ("get", "/api/jobs"), ("put", "/api/routing")):
        r = client.request(method, path, json=[])
        assert r.status_code == 401, (path, r.text)
        assert r.headers["www-authenticate"] == "Bearer"


def test_wrong_token_is_401(client: TestClient) -> None:
    assert client.get("/api/peers", headers=auth("not-a-token")).status_code == 401


def test_read_role_reads_but_cannot_change(client: TestClient) -> None:
    assert client.get("/api/peers", headers=auth(READ)).status_code == 200
    r = client.put("/api/peers/x", json={"ae_title": "X", "host": "h", "port": 104}, headers=auth(READ))
    assert r.status_code == 403
    r = client.put("/api/routing/modalities/CT", json={"model": "lanczos"}, headers=auth(READ))
    assert r.status_code == 403


def test_reader_role_is_reserved(client: TestClient) -> None:
    assert client.get("/api/jobs", headers=auth(READER)).status_code == 403


def test_peer_validation_error_names_the_key(client: TestClient) -> None:
    r = client.put("/api/peers/ris", json={"ae_title": "RIS", "host": "h", "port": 70000}, headers=auth(ADMIN))
    assert r.status_code == 422
    assert r.json()["keys"] == ["peers.ris.port"]
    r = client.put("/api/peers/ris", json={"ae_title": "X" * 17, "host": "h", "port": 104}, headers=auth(ADMIN))
    assert r.status_code == 422 and r.json()["keys"] == ["peers.ris.ae_title"]
    r = client.put("/api/peers/ris", json={"ae_title": "RIS", "host": "h", "port": 104, "colour": 1},
                   headers=auth(ADMIN))
    assert r.status_code == 422 and r.json()["keys"] == ["peers.ris.colour"]
    assert "ris" not in client.get("/api/peers", headers=auth(READ)).json()


def test_peer_in_use_cannot_be_deleted(client: TestClient) -> None:
    r = client.delete("/api/peers/pacs", headers=auth(ADMIN))
    assert r.status_code == 422
    assert r.json()["keys"] == ["routing.0.destinations"]
    r = client.put("/api/routing", json=[{"match": {"modality": "CT"}, "model": "bicubic", "destinations": ["nope"]}],
                   headers=auth(ADMIN))
    assert r.status_code == 422 and r.json()["keys"] == ["routing.0.destinations"]


def test_peer_change_is_persisted_and_audited(client: TestClient, live: LiveConfig,
                                              sessions: sessionmaker[Session]) -> None:
    r = client.put("/api/peers/ris", json={"ae_title": "RIS", "host": "10.1.2.3", "port": 104}, headers=auth(ADMIN))
    assert r.status_code == 200, r.text
    assert live.current().peers["ris"].host == "10.1.2.3"
    # A second LiveConfig over the same database (another process, or after a restart) sees it too.
    again = LiveConfig(live.base, sessions, ttl_s=0.0)
    assert again.current().peers["ris"].ae_title == "RIS"
    audit = client.get("/api/audit", headers=auth(READ)).json()
    assert audit[0]["action"] == "config.set.peers"
    assert audit[0]["actor"].startswith("admin:") and ADMIN not in audit[0]["actor"]


def test_routing_unknown_model_is_422(client: TestClient) -> None:
    r = client.put("/api/routing/modalities/CT", json={"model": "no-such-model"}, headers=auth(ADMIN))
    assert r.status_code == 422
    assert r.json()["keys"] == ["routing.0.model"]
    r = client.put("/api/routing", json=[{"match": {"modality": "CT"}}], headers=auth(ADMIN))
    assert r.status_code == 422 and r.json()["keys"] == ["routing.0"]
    r = client.put("/api/routing", json=[{"match": {"series_description": "("}, "model": "bicubic"}],
                   headers=auth(ADMIN))
    assert r.status_code == 422 and r.json()["keys"] == ["routing.0.match.series_description"]


def test_routing_change_applies_to_next_series_without_restart(client: TestClient, live: LiveConfig) -> None:
    facts = SeriesFacts(modality="CT", calling_ae="SCANNER")
    before = select_rule(live.current().routing, facts)
    assert before is not None and before[1].model == "bicubic"
    r = client.put("/api/routing/modalities/CT", json={"model": "lanczos", "scale": 4}, headers=auth(ADMIN))
    assert r.status_code == 200, r.text
    assert r.json()["model"] == "lanczos"
    # The same LiveConfig object the pipeline holds: routing for the next series picks the new model.
    after = select_rule(live.current().routing, facts)
    assert after is not None and after[1].model == "lanczos" and after[1].scale == 4
    assert after[1].destinations == ["pacs"]
    assert client.get("/api/routing/modalities", headers=auth(READ)).json()["CT"]["model"] == "lanczos"


def test_model_for_new_modality_appends_rule(client: TestClient, live: LiveConfig) -> None:
    r = client.put("/api/routing/modalities/mr", json={"model": "bicubic"}, headers=auth(ADMIN))
    assert r.status_code == 200, r.text
    rule = select_rule(live.current().routing, SeriesFacts(modality="MR"))
    assert rule is not None and rule[1].model == "bicubic"


def test_routing_to_a_scale_the_model_cannot_do_is_422(client: TestClient, live: LiveConfig) -> None:
    # The built-in lanczos is x4: a x2 rule would be accepted and then fail every series it routes.
    r = client.put("/api/routing/modalities/CT", json={"model": "lanczos", "scale": 2}, headers=auth(ADMIN))
    assert r.status_code == 422 and r.json()["keys"] == ["routing.0.scale"]
    assert live.current().routing[0].model == "bicubic"
    # An interpolator at another factor is registered like in the YAML file, then routable.
    r = client.post("/api/models", json={"name": "lanczos-x2", "arch": "lanczos", "scale": 2}, headers=auth(ADMIN))
    assert r.status_code == 200, r.text
    r = client.put("/api/routing/modalities/CT", json={"model": "lanczos-x2", "scale": 2}, headers=auth(ADMIN))
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("body, key", [
    ({"name": "lanczos", "arch": "realesrgan", "weights": "x.pth", "scale": 4}, "models.lanczos"),
    ({"name": "BICUBIC", "arch": "lanczos", "scale": 4}, "models.BICUBIC"),
    ({"name": "m", "arch": "bicubic", "weights": "x.pth"}, "models.m.weights"),
    ({"name": "m", "arch": "edsr"}, "models.m.arch"),
])
def test_models_api_refuses_what_the_yaml_refuses(client: TestClient, live: LiveConfig,
                                                  body: dict, key: str) -> None:  # type: ignore[type-arg]
    r = client.post("/api/models", json=body, headers=auth(ADMIN))
    assert r.status_code == 422 and r.json()["keys"] == [key], r.text
    assert body["name"] not in live.current().models


BIG = "99999999999999999999999"  # beyond a signed 64-bit SQL integer


@pytest.mark.parametrize("method, path, token", [
    ("GET", f"/api/jobs/{BIG}", READ),
    ("POST", f"/api/jobs/{BIG}/retry", ADMIN),
    ("POST", f"/api/jobs/{BIG}/cancel", ADMIN),
    ("POST", f"/api/jobs/{BIG}/release", ADMIN),
    ("GET", f"/api/jobs/{BIG}/quality", READ),
    ("GET", f"/api/jobs/{BIG}/slices", READ),
    ("GET", f"/api/jobs/{BIG}/slices/0/psnr", READ),
    ("GET", f"/api/jobs/1/slices/{BIG}/source.png", READ),
    ("GET", f"/api/jobs?offset={BIG}", READ),
    ("GET", f"/api/series?offset={BIG}", READ),
    ("GET", f"/api/reader-studies/{BIG}", READ),
    ("POST", f"/api/reader-studies/{BIG}/start", ADMIN),
    ("POST", f"/api/reader-studies/{BIG}/close", ADMIN),
    ("GET", f"/api/reader-studies/{BIG}/results", READ),
    ("GET", f"/api/reader-studies/{BIG}/results.csv", READ),
    ("GET", f"/api/reader-studies/{BIG}/results.png", READ),
    ("GET", f"/api/reader-studies/{BIG}/answers.csv", READ),
    ("GET", f"/api/reading/{BIG}/cases/1", READER),
    ("GET", f"/api/reading/1/cases/{BIG}", READER),
    ("GET", f"/api/reading/{BIG}/images/x.png", READER),
])
def test_out_of_range_ids_are_422_not_500(client: TestClient, method: str, path: str, token: str) -> None:
    # The test client re-raises a server error (OverflowError from the driver) instead of a 500.
    r = client.request(method, path, headers=auth(token))
    assert r.status_code == 422, r.text
    assert "less than or equal to 9223372036854775807" in r.text


def test_models_list_has_builtins(client: TestClient) -> None:
    models = {m["name"]: m for m in client.get("/api/models", headers=auth(READ)).json()}
    assert models["bicubic"]["builtin"] and models["bicubic"]["usable"]
    assert not models["realesrgan"]["usable"]  # an architecture without weights


def _series(session: Session, uid: str, modality: str) -> Series:
    patient = Patient(patient_id=f"P{uid}")
    study = Study(patient=patient, study_uid=f"1.2.{uid}")
    series = Series(study=study, series_uid=f"1.2.{uid}.1", modality=modality)
    session.add_all([patient, study, series])
    session.flush()
    return series


def test_jobs_filter_retry_cancel(client: TestClient, sessions: sessionmaker[Session]) -> None:
    with sessions() as session, session.begin():
        ct, mr = _series(session, "1", "CT"), _series(session, "2", "MR")
        session.add_all([
            Job(series_pk=ct.id, model="bicubic", state=JobState.failed, error="boom", progress_done=3,
                progress_total=10),
            Job(series_pk=mr.id, model="lanczos", state=JobState.queued),
        ])
    jobs = client.get("/api/jobs", headers=auth(READ)).json()
    assert len(jobs) == 2
    failed = client.get("/api/jobs?state=failed", headers=auth(READ)).json()
    assert [j["modality"] for j in failed] == ["CT"] and failed[0]["progress"]["fraction"] == 0.3
    assert [j["model"] for j in client.get("/api/jobs?modality=mr", headers=auth(READ)).json()] == ["lanczos"]
    bogus = client.get("/api/jobs?state=bogus", headers=auth(READ))
    assert bogus.status_code == 422 and bogus.json()["keys"] == ["query.state"]

    ct_job, mr_job = failed[0]["id"], next(j["id"] for j in jobs if j["modality"] == "MR")
    assert client.post(f"/api/jobs/{ct_job}/retry", headers=auth(READ)).status_code == 403
    r = client.post(f"/api/jobs/{ct_job}/retry", headers=auth(ADMIN))
    assert r.status_code == 200 and r.json()["state"] == "queued" and r.json()["error"] == ""
    # A queued job's retry resends it (its broker message may be gone); a running one is refused.
    r = client.post(f"/api/jobs/{ct_job}/retry", headers=auth(ADMIN))
    assert r.status_code == 200 and r.json()["state"] == "queued"
    with sessions() as session, session.begin():
        session.get(Job, ct_job).state = JobState.running
    assert client.post(f"/api/jobs/{ct_job}/retry", headers=auth(ADMIN)).status_code == 409
    r = client.post(f"/api/jobs/{mr_job}/cancel", headers=auth(ADMIN))
    assert r.status_code == 200 and r.json()["state"] == "cancelled"
    assert client.post("/api/jobs/999/cancel", headers=auth(ADMIN)).status_code == 404
    with sessions() as session:
        assert session.get(Job, mr_job).state is JobState.cancelled
        actions = session.execute(select(Audit.action).order_by(Audit.id)).scalars().all()
    assert actions == ["job.retry", "job.retry", "job.cancel"]


def test_retry_of_a_job_done_with_errors_starts_a_fresh_attempt_budget(
        client: TestClient, sessions: sessionmaker[Session]) -> None:
    with sessions() as session, session.begin():
        ct = _series(session, "3", "CT")
        job = Job(series_pk=ct.id, model="bicubic", state=JobState.done_with_errors, attempts=6,
                  error="1 of 7 slice(s) not derived: 1.2.3: ValueError: no pixel data")
        session.add(job)
        session.flush()
        job_id = job.id
    listed = client.get("/api/jobs?state=done_with_errors", headers=auth(READ)).json()
    assert [j["id"] for j in listed] == [job_id]
    r = client.post(f"/api/jobs/{job_id}/retry", headers=auth(ADMIN))
    assert r.status_code == 200 and r.json()["state"] == "queued"
    with sessions() as session:
        assert session.get(Job, job_id).attempts == 0


def test_series_and_stats(client: TestClient, sessions: sessionmaker[Session]) -> None:
    with sessions() as session, session.begin():
        s = _series(session, "9", "CT")
        session.add(Job(series_pk=s.id, model="bicubic", state=JobState.failed, error="decoder failed"))
    rows = client.get("/api/series?modality=CT", headers=auth(READ)).json()
    assert [r["series_uid"] for r in rows] == ["1.2.9.1"]
    one = client.get("/api/series/1.2.9.1", headers=auth(READ)).json()
    assert one["jobs"][0]["error"] == "decoder failed"
    assert "patient" not in str(one).lower()
    stats = client.get("/api/stats", headers=auth(READ)).json()
    assert stats["jobs"]["failed"] == 1 and stats["failures"]["recent"][0]["error"] == "decoder failed"


def test_openapi_docs(client: TestClient) -> None:
    assert client.get("/api/docs").status_code == 200
    spec = client.get("/api/openapi.json").json()
    assert "/api/routing/modalities/{modality}" in spec["paths"]
