"""The noise guard in the admin API: the job's figures, the viewer's per-slice ratios, the companion
report and the admin's release of a held series (a real job run by the worker code)."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from config.loader import parse_config
from dicom_node.index.live_config import LiveConfig
from dicom_node.index.models import Audit, Outbox, OutboxState, Series, SeriesState
from dicom_node.ingest import store_encoded
from dicom_node.pipeline import route_series
from sr_engine.archs import create_model, state_dict_for_export
from tests.admin.conftest import ADMIN, READ, auth, base_config
from workers import model_cache
from workers.process import run_job


@pytest.fixture()
def live(tmp_path: Path, sessions: sessionmaker[Session]) -> LiveConfig:
    # The zero-weight compact x4 upscales by nearest neighbour: about x1.33 lanczos's flat-tissue noise.
    weights = tmp_path / "weights" / "blocky.pth"
    weights.parent.mkdir()
    model = create_model("compact", scale=4, num_feat=4, num_conv=1)
    torch.save({k: torch.zeros_like(v) for k, v in state_dict_for_export(model).items()}, weights)
    data = base_config(tmp_path, models={"blocky": {"arch": "compact", "weights": str(weights)}},
                       routing=[{"name": "ct", "match": {"modality": "CT"}, "model": "blocky", "destinations": ["pacs"],
                                 "max_noise_ratio": 1.2, "noise_action": "hold"}])
    return LiveConfig(parse_config(data, environ={}), sessions, ttl_s=0.0)


@pytest.fixture()
def held_job(live: LiveConfig, sessions: sessionmaker[Session], ct_dirs: list[Path]) -> Iterator[int]:
    torch.set_num_threads(1)
    chest = next(d for d in ct_dirs if d.name.startswith("lung-pet-ct-dx"))
    for f in sorted(chest.glob("*.dcm"))[10:12]:
        series_pk = store_encoded(sessions, Path(live.base.node.storage_dir), f.read_bytes(), "SCANNER").series_pk
    with sessions() as s, s.begin():
        s.get(Series, series_pk).state = SeriesState.stable
    (job_id,) = route_series(live.current(), sessions, series_pk)
    model_cache.clear()
    assert run_job(live.current(), sessions, job_id, "cpu", "t1") == "done"
    yield job_id
    model_cache.clear()


def test_held_job_figures_viewer_report_and_release(client: TestClient, sessions: sessionmaker[Session],
                                                    held_job: int) -> None:
    job = client.get(f"/api/jobs/{held_job}", headers=auth(READ)).json()
    assert job["held"] and job["delivery"]["held"] == 2 and job["delivery"]["pending"] == 0
    q = job["quality"]
    assert 1.25 < q["noise_ratio"] < 1.45 and q["edge_ratio"] > 1.0 and q["over"] == 2 and q["limit"] == 1.2
    assert q["action"] == "hold" and "slices" not in q  # the per-slice list is the companion report's

    report = client.get(f"/api/jobs/{held_job}/quality", headers=auth(READ)).json()
    assert len(report["slices"]) == 2 and report["summary"]["noise_ratio"] == q["noise_ratio"]

    viewer = client.get(f"/api/jobs/{held_job}/slices", headers=auth(READ)).json()
    assert viewer["held"] and viewer["noise_ratio"] == q["noise_ratio"]
    for s in viewer["slices"]:
        assert s["noise_ratio"] == report["slices"][s["source_sop"]][0] > 1.2 and s["edge_ratio"] is not None

    assert client.post(f"/api/jobs/{held_job}/release", headers=auth(READ)).status_code == 403
    r = client.post(f"/api/jobs/{held_job}/release", headers=auth(ADMIN))
    assert r.status_code == 200 and r.json()["released_rows"] == 2 and not r.json()["held"]
    with sessions() as s:
        assert list(s.scalars(select(Outbox.state))) == [OutboxState.pending] * 2
        assert s.scalar(select(Audit.detail).where(Audit.action == "job.release")).startswith(f"job {held_job}: held")
    again = client.post(f"/api/jobs/{held_job}/release", headers=auth(ADMIN))
    assert again.status_code == 409 and "not held" in again.text


def test_a_job_never_measured_has_no_quality(client: TestClient, live: LiveConfig,
                                             sessions: sessionmaker[Session], ct_dirs: list[Path]) -> None:
    from tests.admin.conftest import (
        make_done_job,  # written without the worker: no guard ran
    )

    chest = next(d for d in ct_dirs if d.name.startswith("lung-pet-ct-dx"))
    job = make_done_job(sessions, Path(live.base.node.storage_dir), sorted(chest.glob("*.dcm"))[:1])
    view = client.get(f"/api/jobs/{job}", headers=auth(READ)).json()
    assert view["quality"] is None and view["held"] is False
    assert client.get(f"/api/jobs/{job}/slices", headers=auth(READ)).json()["slices"][0]["noise_ratio"] is None
    assert client.post(f"/api/jobs/{job}/release", headers=auth(ADMIN)).status_code == 409
