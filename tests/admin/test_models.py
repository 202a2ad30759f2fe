"""Adding a checkpoint through the API: sha256 verified, strict load, model card shown (real weights)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from dicom_node.index.live_config import LiveConfig
from tests.admin.conftest import ADMIN, READ, auth

ANIME = "RealESRGAN_x4plus_anime_6B.pth"


@pytest.fixture()
def checkpoint(shared_dir: Path, tmp_path: Path) -> tuple[Path, str]:
    sums = dict(line.split()[::-1] for line in (shared_dir / "weights" / "SHA256SUMS").read_text().splitlines())
    target = tmp_path / "weights" / ANIME
    target.parent.mkdir()
    shutil.copy(shared_dir / "weights" / ANIME, target)
    target.with_suffix(".md").write_text("# anime_6B\nRRDBNet 6 blocks, x4. Trained on anime images.\n")
    return target, sums[ANIME]


def test_add_checkpoint_verifies_and_shows_card(client: TestClient, live: LiveConfig,
                                                checkpoint: tuple[Path, str]) -> None:
    path, sha = checkpoint
    body = {"name": "anime", "arch": "realesrgan", "weights": str(path), "sha256": sha, "scale": 4}
    r = client.post("/api/models", json=body, headers=auth(ADMIN))
    assert r.status_code == 200, r.text
    shown = r.json()
    assert shown["sha256"] == sha and shown["sha256_file"] == sha and shown["sha256_ok"] is True
    assert shown["card"]["format"] == "markdown" and "RRDBNet 6 blocks" in shown["card"]["text"]
    assert live.current().models["anime"].sha256 == sha
    names = [m["name"] for m in client.get("/api/models", headers=auth(READ)).json()]
    assert names[0] == "anime" and "bicubic" in names
    # Now routable: the model for CT can be set to it.
    r = client.put("/api/routing/modalities/CT", json={"model": "anime"}, headers=auth(ADMIN))
    assert r.status_code == 200, r.text
    # ... and therefore not removable while routed.
    assert client.delete("/api/models/anime", headers=auth(ADMIN)).json()["keys"] == ["routing.0.model"]


def test_add_checkpoint_refusals_name_the_key(client: TestClient, checkpoint: tuple[Path, str],
                                              tmp_path: Path) -> None:
    path, sha = checkpoint
    base = {"name": "x", "arch": "realesrgan", "weights": str(path), "scale": 4}

    def keys(body: dict) -> list[str]:
        r = client.post("/api/models", json=body, headers=auth(ADMIN))
        assert r.status_code == 422, r.text
        return r.json()["keys"]

    assert keys({**base, "sha256": "0" * 64}) == ["models.x.sha256"]  # tampered / wrong file
    assert keys({**base, "sha256": "xyz"}) == ["models.x.sha256"]  # not a digest
    assert keys({**base, "weights": str(tmp_path / "weights" / "missing.pth")}) == ["models.x.weights"]
    assert keys({**base, "scale": 2}) == ["models.x.scale"]
    assert keys({**base, "arch": "swinir"}) == ["models.x.weights"]  # keys do not fit the architecture
    assert keys({**base, "arch": "nope"}) == ["models.x.arch"]
    assert keys({k: v for k, v in base.items() if k != "name"}) == ["name"]
    assert client.post("/api/models", json=base, headers=auth(READ)).status_code == 403
    assert "x" not in [m["name"] for m in client.get("/api/models", headers=auth(READ)).json()]


def test_checkpoints_only_from_the_model_directories(client: TestClient, live: LiveConfig,
                                                    checkpoint: tuple[Path, str], tmp_path: Path) -> None:
    path, sha = checkpoint
    outside = tmp_path / "elsewhere" / ANIME
    outside.parent.mkdir()
    shutil.copy(path, outside)
    (path.parent / "link.pth").symlink_to(outside)  # inside by name, outside in fact

    def refusal(weights: str) -> str:
        r = client.post("/api/models", json={"name": "x", "arch": "realesrgan", "weights": weights, "scale": 4},
                        headers=auth(ADMIN))
        assert r.status_code == 422 and r.json()["keys"] == ["models.x.weights"], r.text
        return r.json()["detail"]

    # The same words whether the file exists, is readable, or is a real checkpoint: no file oracle.
    details = {refusal(w) for w in ("/etc/shadow", "/etc/passwd", "/no/such/file.pth", str(outside),
                                    str(path.parent / "link.pth"), f"{path.parent}/../elsewhere/{ANIME}",
                                    "../elsewhere/" + ANIME)}
    assert details == {"models.x.weights: weights not found in an allowed model directory (models_dirs)"}
    assert "x" not in live.current().models
    # A name relative to a model directory is found there and stored as the full path.
    r = client.post("/api/models", json={"name": "rel", "arch": "realesrgan", "weights": ANIME, "scale": 4},
                    headers=auth(ADMIN))
    assert r.status_code == 200, r.text
    assert live.current().models["rel"].weights == path and live.current().models["rel"].sha256 == sha
