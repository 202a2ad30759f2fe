"""Viewer endpoints over a real derived series (real CT, registry model, the pipeline's writer)."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.index.live_config import LiveConfig
from tests.admin.conftest import READ, auth, make_done_job


def test_slices_png_and_psnr(client: TestClient, live: LiveConfig, sessions: sessionmaker[Session],
                             ct_dirs: list[Path]) -> None:
    chest = next(d for d in ct_dirs if d.name.startswith("lung-pet-ct-dx"))
    files = sorted(chest.glob("*.dcm"))[10:13]
    job = make_done_job(sessions, Path(live.base.node.storage_dir), files, model="bicubic", scale=2)
    info = client.get(f"/api/jobs/{job}/slices", headers=auth(READ)).json()
    assert len(info["slices"]) == 3
    first = info["slices"][0]
    assert first["source_size"] == [512, 512] and first["derived_size"] == [1024, 1024]
    # The series' own stored window is the default (first of its presets).
    assert info["window"] == {"center": 40.0, "width": 350.0}

    src = client.get(f"/api/jobs/{job}/slices/0/source.png?center=40&width=400", headers=auth(READ))
    der = client.get(f"/api/jobs/{job}/slices/0/derived.png?center=40&width=400", headers=auth(READ))
    assert src.headers["content-type"] == "image/png"
    a, b = (np.asarray(Image.open(io.BytesIO(r.content))) for r in (src, der))
    assert a.shape == (512, 512) and b.shape == (1024, 1024)
    # Same window on both: the derived image downsampled looks like the original.
    assert abs(float(a.mean()) - float(b.mean())) < 3
    lung = np.asarray(Image.open(io.BytesIO(client.get(
        f"/api/jobs/{job}/slices/0/source.png?center=-600&width=1500", headers=auth(READ)).content)))
    assert not np.array_equal(a, lung)  # the window changes the rendering, display only

    psnr = client.get(f"/api/jobs/{job}/slices/1/psnr", headers=auth(READ)).json()
    # Bicubic x2 degraded back by the antialiased bicubic operator stays close to the original.
    assert psnr["psnr_db"] is not None and psnr["psnr_db"] > 35, psnr
    assert psnr["data_range"] == 4095.0

    assert client.get(f"/api/jobs/{job}/slices/7/source.png", headers=auth(READ)).status_code == 404
    assert client.get(f"/api/jobs/{job}/slices/0/other.png", headers=auth(READ)).status_code == 404
    assert client.get(f"/api/jobs/{job}/slices/0/source.png").status_code == 401
