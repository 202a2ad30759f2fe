"""The reader-study API end to end in-process: create on real stored CT slices, candidates computed
by three real models, two readers answer, results computed, blinding and roles enforced."""
from __future__ import annotations

import csv
import io
import json
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from dicom_node.index.models import Audit, ReaderStudyAnswer, ReaderStudyCandidate
from tests.reader_study.conftest import ADMIN, MODELS, READ, READERS, STRANGER, auth, fp, wait_open


def _create(client: TestClient, slices: list[str], **extra: object) -> dict:
    body = {"name": "chest x4", "slices": slices, "crop": 64, "models": MODELS,
            "readers": [fp(t) for t in READERS], "show_ground_truth": True, **extra}
    r = client.post("/api/reader-studies", json=body, headers=auth(ADMIN))
    assert r.status_code == 201, r.text
    return wait_open(lambda p: client.get(p, headers=auth(ADMIN)), r.json()["id"])


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_rank_study_blinded_answers_and_results(client: TestClient, stored_slices: list[str], sessions) -> None:
    study = _create(client, stored_slices[:3], scales=["128to512", "512to2048"])
    sid = study["id"]
    assert study["cases"] == 6

    # Candidates are cached float arrays with PSNR/SSIM where a truth exists (128→512 only).
    with sessions() as s:
        cands = s.execute(select(ReaderStudyCandidate)).scalars().all()
    assert len(cands) == 18
    assert sum(c.psnr_db is not None for c in cands) == 9 and all(c.psnr_db is None or c.psnr_db > 20 for c in cands)

    # Blinding: whatever a reader receives never names a model while the study is open.
    h = auth(READERS[0])
    mine = client.get("/api/reading/studies", headers=h).json()
    assert [(m["id"], m["total"], m["answered"]) for m in mine] == [(sid, 6, 0)]
    texts = []
    for k in range(1, 7):
        r = client.get(f"/api/reading/{sid}/cases/{k}", headers=h)
        texts.append(r.text)
        case = r.json()
        assert [c["label"] for c in case["candidates"]] == ["A", "B", "C"]
        ranking = [c["id"] for c in case["candidates"]][::-1]
        png = client.get(f"/api/reading/{sid}/images/{ranking[0]}.png?preset=lung", headers=h)
        assert png.status_code == 200 and png.content[:4] == b"\x89PNG"
        answer = client.post(f"/api/reading/{sid}/cases/{k}/answer", json={"ranking": ranking}, headers=h)
        assert answer.status_code == 200
    joined = "\n".join(texts)
    assert not any(m in joined for m in MODELS + ["realesrgan"]) and stored_slices[0] not in joined

    # Resumable: the reader's own answer comes back; a wrong ranking is refused naming the key.
    back = client.get(f"/api/reading/{sid}/cases/2", headers=h).json()
    assert back["ranking"] == [c["id"] for c in back["candidates"]][::-1] and back["answered"] == 6
    bad = client.post(f"/api/reading/{sid}/cases/2/answer", json={"ranking": ["x", "y", "z"]}, headers=h)
    assert bad.status_code == 422 and bad.json()["keys"] == ["ranking"]

    # Another reader's ids do not open this reader's images; a reader not in the study sees nothing.
    other = client.get(f"/api/reading/{sid}/cases/1", headers=auth(READERS[1])).json()
    assert client.get(f"/api/reading/{sid}/images/{other['candidates'][0]['id']}.png", headers=h).status_code == 404
    assert client.get(f"/api/reading/{sid}/cases/1", headers=auth(STRANGER)).status_code == 404
    # Roles: readers cannot use the admin API, admins and read tokens cannot use the reading API.
    assert client.get(f"/api/reader-studies/{sid}/results", headers=h).status_code == 403
    assert client.get("/api/reading/studies", headers=auth(ADMIN)).status_code == 403

    # Second reader ranks by always putting the display position B first.
    h2 = auth(READERS[1])
    for k in range(1, 7):
        ids = [c["id"] for c in client.get(f"/api/reading/{sid}/cases/{k}", headers=h2).json()["candidates"]]
        client.post(f"/api/reading/{sid}/cases/{k}/answer", json={"ranking": [ids[1], ids[0], ids[2]]}, headers=h2)

    res = client.get(f"/api/reader-studies/{sid}/results", headers=auth(READ)).json()
    # Independent mean ranks from the stored answers.
    with sessions() as s:
        model_of = {c.id: c.model for c in s.execute(select(ReaderStudyCandidate)).scalars()}
        answers = s.execute(select(ReaderStudyAnswer).order_by(ReaderStudyAnswer.id)).scalars().all()
        audit = s.execute(select(Audit.action)).scalars().all()
    assert len(answers) == 12 and audit.count("reader_study.answer") == 12
    for scale in ("128to512", "512to2048"):
        ranks: dict[str, list[int]] = {m: [] for m in MODELS}
        for a in answers:
            if a.case_id in {c.case_id for c in _cands_of_scale(sessions, sid, scale)}:
                for r, cid in enumerate(json.loads(a.ranking_json)):
                    ranks[model_of[cid]].append(r + 1)
        for m in MODELS:
            got = res["per_scale"][scale]["models"][m]
            assert abs(got["value"] - np.mean(ranks[m])) < 1e-3, (scale, m, got, ranks[m])
            assert got["ci"][0] <= got["value"] <= got["ci"][1]
        assert res["per_scale"][scale]["agreement"]["cases_with_two_readers"] == 3
    assert res["per_scale"]["128to512"]["models"]["bicubic"]["psnr_db"] > 20
    assert res["per_scale"]["512to2048"]["models"]["bicubic"]["psnr_db"] is None

    # Overall place (Table 5's last column): from the mean of the two scales' mean ranks.
    for row in res["table"]:
        both = [res["per_scale"][s]["models"][row["model"]]["value"] for s in ("128to512", "512to2048")]
        assert row["overall"]["value"] == pytest.approx(np.mean(both), abs=1e-3)
    assert [r["overall"]["place"] for r in res["table"]] == sorted(r["overall"]["place"] for r in res["table"])

    results_csv = client.get(f"/api/reader-studies/{sid}/results.csv", headers=auth(READ)).text
    table = list(csv.DictReader(io.StringIO(results_csv)))
    assert sorted(r["model"] for r in table) == sorted(MODELS)
    assert client.get(f"/api/reader-studies/{sid}/results.png", headers=auth(READ)).content[:4] == b"\x89PNG"
    answers_csv = client.get(f"/api/reader-studies/{sid}/answers.csv", headers=auth(READ)).text
    audit_rows = list(csv.DictReader(io.StringIO(answers_csv)))
    assert len(audit_rows) == 12 and all(len(r["display_order"].split()) == 3 for r in audit_rows)

    # Closing reveals the models to the reader and stops answers.
    assert client.post(f"/api/reader-studies/{sid}/close", headers=auth(ADMIN)).json()["state"] == "closed"
    revealed = client.get(f"/api/reading/{sid}/cases/1", headers=h).json()
    assert sorted(c["model"] for c in revealed["candidates"]) == sorted(MODELS)
    assert client.post(f"/api/reading/{sid}/cases/1/answer", json={"ranking": ranking}, headers=h).status_code == 409


def _cands_of_scale(sessions, sid: int, scale: str) -> list[ReaderStudyCandidate]:
    from dicom_node.index.models import ReaderStudyCase

    with sessions() as s:
        return s.execute(select(ReaderStudyCandidate).join(ReaderStudyCase).where(
            ReaderStudyCase.study_id == sid, ReaderStudyCase.scale_key == scale)).scalars().all()


def test_bad_definitions_name_the_key(client: TestClient, stored_slices: list[str]) -> None:
    base = {"name": "x", "slices": stored_slices[:1], "models": ["bicubic", "lanczos"], "readers": [fp(READERS[0])]}
    cases = [
        ({"models": ["bicubic", "nope"]}, "models"),
        ({"readers": [fp(ADMIN)]}, "readers"),
        ({"slices": ["1.2.3.4"]}, "slices"),
        ({"slices": [], "random": {"count": 2, "modality": "MR"}}, "random"),
    ]
    for change, key in cases:
        r = client.post("/api/reader-studies", json={**base, **change}, headers=auth(ADMIN))
        assert r.status_code == 422 and key in r.json()["keys"], (change, r.text)
    r = client.post("/api/reader-studies", json={**base, "random": {"count": 2}}, headers=auth(ADMIN))
    assert r.status_code == 422  # slices and random together
    assert client.post("/api/reader-studies", json=base, headers=auth(READ)).status_code == 403


def test_random_draw_is_seeded_and_pairwise_task(client: TestClient, stored_slices: list[str], sessions) -> None:
    body = {"name": "pairs", "random": {"count": 3, "modality": "CT"}, "seed": 7, "crop": 32, "task": "pairwise",
            "models": ["bicubic", "lanczos", "esrgan-anime"], "readers": [fp(READERS[0])]}
    a = client.post("/api/reader-studies", json=body, headers=auth(ADMIN)).json()
    b = client.post("/api/reader-studies", json=body, headers=auth(ADMIN)).json()
    wait_open(lambda p: client.get(p, headers=auth(ADMIN)), a["id"])
    wait_open(lambda p: client.get(p, headers=auth(ADMIN)), b["id"])
    from dicom_node.index.models import ReaderStudyCase

    with sessions() as s:  # the same seed draws the same slices
        drawn = [[c.instance_pk for c in s.execute(select(ReaderStudyCase).where(ReaderStudyCase.study_id == i)
                                                   .order_by(ReaderStudyCase.k)).scalars()] for i in (a["id"], b["id"])]
    assert drawn[0] == drawn[1] and len(set(drawn[0])) == 3
    h = auth(READERS[0])
    seq_a = [client.get(f"/api/reading/{a['id']}/cases/{k}", headers=h).json() for k in (1, 2, 3)]
    assert all(len(c["candidates"]) == 2 for c in seq_a)
    for k, c in enumerate(seq_a, 1):
        ids = [x["id"] for x in c["candidates"]]
        answer = client.post(f"/api/reading/{a['id']}/cases/{k}/answer", json={"ranking": ids}, headers=h)
        assert answer.status_code == 200
    res = client.get(f"/api/reader-studies/{a['id']}/results", headers=auth(ADMIN)).json()
    assert res["metric"] == "win rate"
    shown = sum(m["n"] for m in res["per_scale"]["128to512"]["models"].values())
    assert shown == 6  # three cases, two candidates each


def test_failed_candidates_show_why_and_can_be_retried(client: TestClient, stored_slices: list[str], live) -> None:
    # A model whose weights file is gone: the study is created, computing fails with the reason.
    models = live.current().model_dump(mode="json")["models"]
    models["gone"] = {"arch": "realesrgan", "weights": "/nonexistent/weights.pth", "scale": 4}
    live.set_section("models", models, "test")
    body = {"name": "broken", "slices": stored_slices[:1], "crop": 32, "models": ["bicubic", "gone"],
            "readers": [fp(READERS[0])]}
    sid = client.post("/api/reader-studies", json=body, headers=auth(ADMIN)).json()["id"]
    deadline = time.monotonic() + 30
    while (study := client.get(f"/api/reader-studies/{sid}", headers=auth(ADMIN)).json())["state"] != "failed":
        assert time.monotonic() < deadline, study
        time.sleep(0.1)
    assert "model 'gone' cannot be loaded" in study["error"] and "nonexistent" in study["error"], study["error"]
    # Readers see nothing of a study that is not open.
    assert client.get("/api/reading/studies", headers=auth(READERS[0])).json() == []
    assert client.get(f"/api/reading/{sid}/cases/1", headers=auth(READERS[0])).status_code == 409
    # Fixed config → retry computes the missing candidates and opens the study.
    models["gone"] = {"arch": "lanczos", "scale": 4}
    live.set_section("models", models, "test")
    assert client.post(f"/api/reader-studies/{sid}/start", headers=auth(ADMIN)).status_code == 200
    wait_open(lambda p: client.get(p, headers=auth(ADMIN)), sid)


def test_cli_lists_and_exports_results(client: TestClient, stored_slices: list[str], tmp_path, shared_dir,
                                       capsys) -> None:
    import yaml

    from srnode.cli import main
    from tests.reader_study.conftest import node_config

    body = {"name": "cli", "slices": stored_slices[:2], "crop": 32, "models": ["bicubic", "lanczos"],
            "readers": [fp(READERS[0])]}
    sid = client.post("/api/reader-studies", json=body, headers=auth(ADMIN)).json()["id"]
    wait_open(lambda p: client.get(p, headers=auth(ADMIN)), sid)
    h = auth(READERS[0])
    for k in (1, 2):
        case = client.get(f"/api/reading/{sid}/cases/{k}", headers=h).json()
        client.post(f"/api/reading/{sid}/cases/{k}/answer", json={"ranking": [c["id"] for c in case["candidates"]]},
                    headers=h)
    config = tmp_path / "srnode.yaml"
    config.write_text(yaml.safe_dump(node_config(tmp_path, shared_dir)))
    capsys.readouterr()
    assert main(["reader-study", "list", "--config", str(config)]) == 0
    assert f"{fp(READERS[0])}:2/2" in capsys.readouterr().out
    out_csv, out_png = tmp_path / "r.csv", tmp_path / "r.png"
    assert main(["reader-study", "results", str(sid), "--config", str(config), "--csv", str(out_csv),
                 "--png", str(out_png), "--answers", str(tmp_path / "a.csv")]) == 0
    printed = capsys.readouterr().out
    api = client.get(f"/api/reader-studies/{sid}/results", headers=auth(ADMIN)).json()
    for m in ("bicubic", "lanczos"):
        assert f"{api['per_scale']['128to512']['models'][m]['value']:.2f}" in printed.split(m, 1)[1].splitlines()[0]
    assert out_csv.read_bytes() == client.get(f"/api/reader-studies/{sid}/results.csv", headers=auth(ADMIN)).content
    assert out_png.read_bytes()[:4] == b"\x89PNG" and len((tmp_path / "a.csv").read_text().splitlines()) == 3
    assert main(["reader-study", "results", "999", "--config", str(config)]) == 1


def test_readers_are_listed_with_the_name_their_token_was_given(client: TestClient) -> None:
    readers = {r["reader"]: r["name"] for r in client.get("/api/reader-studies/readers", headers=auth(ADMIN)).json()}
    assert readers[fp(READERS[0])] == "" and readers[fp(READERS[1])] == "Dr. Kim"
