"""Study presets: `native-512to2048` compares lanczos with the configured x4 networks on native
512² slices upscaled x4 (no downscaling, so no ground truth): a preference ranking study."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient
from pydantic import ValidationError
from sqlalchemy import select

from config.loader import parse_config
from dicom_node.index.models import ReaderStudyCandidate, ReaderStudyCase
from dicom_node.reader_study.definition import (
    StudyDefinition,
    configured_networks,
    preset_definition,
)
from srnode.cli import main
from tests.reader_study.conftest import ADMIN, READERS, auth, fp, node_config


def test_native_preset_is_lanczos_and_the_configured_networks(tmp_path: Path, shared_dir: Path) -> None:
    raw = node_config(tmp_path, shared_dir)
    # Interpolators and other scales are not "the models" a site wants checked against lanczos.
    raw["models"].update({"lanczos-x2": {"arch": "lanczos", "scale": 2}, "smooth": {"arch": "bicubic", "scale": 4}})
    cfg = parse_config(raw, environ={})
    assert configured_networks(cfg.models) == ["esrgan-anime"]
    d = preset_definition("native-512to2048", readers=[fp(READERS[0])], models=configured_networks(cfg.models))
    assert d.models == ["lanczos", "esrgan-anime"] and d.scales == ["512to2048"]
    assert d.slice_size == 512 and d.task == "rank" and not d.show_ground_truth
    assert d.random is not None and d.random.count == 20 and not d.slices
    assert "esrgan" not in d.name  # the name is shown to readers
    with pytest.raises(ValueError, match="models: the native-512to2048 preset compares lanczos"):
        preset_definition("native-512to2048", readers=[fp(READERS[0])], models=[])
    with pytest.raises(ValueError, match="unknown study preset"):
        preset_definition("native", readers=[fp(READERS[0])], models=["esrgan-anime"])


def test_a_reference_is_refused_where_no_scale_has_one() -> None:
    with pytest.raises(ValidationError, match="show_ground_truth: only 128to512 cases have a ground truth"):
        StudyDefinition(name="x", slices=["1.2.3"], scales=["512to2048"], models=["lanczos", "bicubic"],
                        readers=["abcd1234"], show_ground_truth=True)
    # With a 128→512 scale beside it, the reference is shown on those cases only (as before).
    StudyDefinition(name="x", slices=["1.2.3"], scales=["128to512", "512to2048"], models=["lanczos", "bicubic"],
                    readers=["abcd1234"], show_ground_truth=True)


def test_slice_size_filters_draws_and_refuses_other_slices(client: TestClient, stored_slices: list[str]) -> None:
    base = {"name": "x", "models": ["bicubic", "lanczos"], "readers": [fp(READERS[0])], "slice_size": 256}
    r = client.post("/api/reader-studies", json={**base, "random": {"count": 2}}, headers=auth(ADMIN))
    assert r.status_code == 422 and "random" in r.json()["keys"], r.text
    assert "256x256" in r.text  # the stored chest slices are 512x512
    r = client.post("/api/reader-studies", json={**base, "slices": stored_slices[:1]}, headers=auth(ADMIN))
    assert r.status_code == 422 and "slices" in r.json()["keys"] and "512x512" in r.text, r.text


def test_cli_creates_an_open_native_study_readers_can_rank(client: TestClient, stored_slices: list[str],
                                                             tmp_path: Path, shared_dir: Path, sessions,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "srnode.yaml"
    config.write_text(yaml.safe_dump(node_config(tmp_path, shared_dir)))
    argv = ["reader-study", "create", "--config", str(config), "--preset", "native-512to2048",
            "--readers", fp(READERS[0]), "--count", "2", "--crop", "32"]
    assert main([*argv, "--dry-run"]) == 0
    assert client.get("/api/reader-studies", headers=auth(ADMIN)).json() == []  # dry run: nothing created
    capsys.readouterr()
    assert main(argv) == 0
    out = capsys.readouterr().out
    study = client.get("/api/reader-studies", headers=auth(ADMIN)).json()[0]
    assert study["state"] == "open" and f"study {study['id']} open: 2 cases x 2 candidates" in out
    assert study["definition"]["models"] == ["lanczos", "esrgan-anime"]
    sid = study["id"]
    with sessions() as s:
        cases = s.execute(select(ReaderStudyCase).where(ReaderStudyCase.study_id == sid)).scalars().all()
        assert [c.scale_key for c in cases] == ["512to2048"] * 2
        assert not any(c.truth_path for c in cases)  # native input: nothing to compare against
        cands = s.execute(select(ReaderStudyCandidate).join(ReaderStudyCase)
                          .where(ReaderStudyCase.study_id == sid)).scalars().all()
        assert sorted(c.model for c in cands) == ["esrgan-anime", "esrgan-anime", "lanczos", "lanczos"]
        assert all(c.psnr_db is None for c in cands)
    h = auth(READERS[0])
    for k in (1, 2):
        case = client.get(f"/api/reading/{sid}/cases/{k}", headers=h).json()
        assert case["reference"] is None and case["size"] == [128, 128] and len(case["candidates"]) == 2
        assert "lanczos" not in str(case) and "esrgan" not in str(case)  # blinded
        ids = [c["id"] for c in case["candidates"]]
        assert client.post(f"/api/reading/{sid}/cases/{k}/answer", json={"ranking": ids}, headers=h).status_code == 200
    res = client.get(f"/api/reader-studies/{sid}/results", headers=auth(ADMIN)).json()
    models = res["per_scale"]["512to2048"]["models"]
    assert set(models) == {"lanczos", "esrgan-anime"} and all(m["psnr_db"] is None for m in models.values())
    assert sum(m["value"] for m in models.values()) == pytest.approx(3.0)  # mean ranks of two
    assert sum(m["n"] for m in models.values()) == 4  # two cases, two candidates each
