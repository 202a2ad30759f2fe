"""The noise guard end to end: real CT stored and routed, run_job with real models, the job record,
the derived slices' DerivationDescription and the outbox rows (mark, hold, release)."""
from __future__ import annotations

import json
from pathlib import Path

import pydicom
import pytest
import torch
from sqlalchemy import select

from dicom_node.index.models import Instance, Job, Outbox, OutboxState, Series
from dicom_node.outbox.hold import release_held_job
from dicom_node.outbox.queue import due_items
from dicom_node.pipeline import route_series
from sr_engine.archs import create_model, state_dict_for_export
from tests.pipeline.test_jobs import _store_series, make_cfg
from workers import model_cache
from workers.noise_guard import MIN_FLAT_PIXELS
from workers.process import run_job

torch.set_num_threads(1)


@pytest.fixture
def blocky(tmp_path: Path) -> Path:
    """A real x4 SRVGGNetCompact checkpoint with all weights zero: its output is the nearest-neighbour
    upscale (the architecture adds it to its convolutions), whose 4x4 blocks measure about x1.33 the
    flat-tissue noise of lanczos on these slices: a model that invents texture, deterministically."""
    path = tmp_path / "blocky.pth"
    model = create_model("compact", scale=4, num_feat=4, num_conv=1)
    torch.save({k: torch.zeros_like(v) for k, v in state_dict_for_export(model).items()}, path)
    return path


def _run(tmp_path: Path, ct_dirs: list[Path], blocky: Path, rule: dict, n: int = 2, **extra: object):  # type: ignore[no-untyped-def]
    engine, factory, series_pk, _files = _store_series(tmp_path, ct_dirs, n)
    models = {"bicubic": {"arch": "bicubic", "scale": 2}, "blocky": {"arch": "compact", "weights": str(blocky)}}
    cfg = make_cfg(tmp_path, [{"name": "ct", "match": {"modality": "CT"}, "destinations": ["PACS"], **rule}],
                   models=models, **extra)
    (job_id,) = route_series(cfg, factory, series_pk)
    model_cache.clear()
    state = run_job(cfg, factory, job_id, "cpu", "t1")
    return engine, factory, job_id, state, cfg


def _derived(factory, cfg, job_id: int) -> list[pydicom.Dataset]:  # type: ignore[no-untyped-def]
    with factory() as s:
        job = s.get(Job, job_id)
        series = s.scalar(select(Series).where(Series.series_uid == job.derived_series_uid))
        paths = [i.file_path for i in s.scalars(select(Instance).where(Instance.series_pk == series.id))]
    return [pydicom.dcmread(Path(cfg.node.storage_dir) / p) for p in paths]


def _outbox_states(factory, job_id: int) -> list[OutboxState]:  # type: ignore[no-untyped-def]
    with factory() as s:
        return list(s.scalars(select(Outbox.state).where(Outbox.job_pk == job_id)))


def test_mark_notes_each_slice_over_the_limit(tmp_path: Path, ct_dirs: list[Path], blocky: Path) -> None:
    engine, factory, job_id, state, cfg = _run(tmp_path, ct_dirs, blocky,
                                               {"model": "blocky", "max_noise_ratio": 1.2})
    assert state == "done"
    with factory() as s:
        job = s.get(Job, job_id)
        quality = json.loads(job.quality)
        assert 1.25 < job.noise_ratio < 1.45 and job.edge_ratio > 1.0 and not job.held
    assert quality["limit"] == 1.2 and quality["action"] == "mark" and quality["over"] == 2
    assert all(v[2] >= MIN_FLAT_PIXELS for v in quality["slices"].values()) and len(quality["slices"]) == 2
    for ds in _derived(factory, cfg, job_id):
        noise = quality["slices"][ds.SourceImageSequence[0].ReferencedSOPInstanceUID][0]
        assert ds.DerivationDescription.endswith(f" Noise x{noise:.2f} over lanczos (limit 1.20).")
        assert "model blocky" in ds.DerivationDescription  # appended to, not replaced
    assert _outbox_states(factory, job_id) == [OutboxState.pending] * 2  # mark never holds
    engine.dispose()


@pytest.mark.parametrize("encoding, rows", [("classic", 2), ("enhanced", 1)])
def test_hold_keeps_the_series_from_the_sender_until_released(tmp_path: Path, ct_dirs: list[Path],
                                                              blocky: Path, encoding: str, rows: int) -> None:
    engine, factory, job_id, state, cfg = _run(tmp_path, ct_dirs, blocky,
                                               {"model": "blocky", "max_noise_ratio": 1.2, "noise_action": "hold"},
                                               output={"encoding": encoding})
    assert state == "done"
    with factory() as s:
        job = s.get(Job, job_id)
        assert job.held and json.loads(job.quality)["over"] == 2
        assert due_items(s, "PACS") == []  # the sender sees nothing to send
    assert _outbox_states(factory, job_id) == [OutboxState.held] * rows
    # hold marks nothing: the series is either reviewed and released as it is, or not sent.
    assert all("Noise x" not in ds.DerivationDescription for ds in _derived(factory, cfg, job_id))
    with factory() as s, s.begin():
        assert release_held_job(s, s.get(Job, job_id), "reviewer") == rows
    with factory() as s:
        job = s.get(Job, job_id)
        assert not job.held and json.loads(job.quality)["released_by"] == "reviewer"
        assert len(due_items(s, "PACS")) == rows
    engine.dispose()


def test_hold_under_the_limit_sends_at_the_end(tmp_path: Path, ct_dirs: list[Path], blocky: Path) -> None:
    # Bicubic x2 is smoother than lanczos in flat tissue (about x0.96): nothing is over 1.1.
    engine, factory, job_id, state, cfg = _run(tmp_path, ct_dirs, blocky,
                                               {"model": "bicubic", "max_noise_ratio": 1.1, "noise_action": "hold"})
    assert state == "done"
    with factory() as s:
        job = s.get(Job, job_id)
        assert not job.held and job.noise_ratio < 1.0 and json.loads(job.quality)["over"] == 0
    assert _outbox_states(factory, job_id) == [OutboxState.pending] * 2
    assert all("Noise x" not in ds.DerivationDescription for ds in _derived(factory, cfg, job_id))
    engine.dispose()


def test_no_limit_still_measures(tmp_path: Path, ct_dirs: list[Path], blocky: Path) -> None:
    engine, factory, job_id, state, _cfg = _run(tmp_path, ct_dirs, blocky, {"model": "blocky"}, n=1)
    with factory() as s:
        job = s.get(Job, job_id)
        quality = json.loads(job.quality)
    assert state == "done" and quality["limit"] is None and quality["over"] == 0 and job.noise_ratio > 1.2
    assert _outbox_states(factory, job_id) == [OutboxState.pending]
    engine.dispose()


def test_a_resumed_job_keeps_the_figures_of_slices_derived_before(tmp_path: Path, ct_dirs: list[Path],
                                                                  blocky: Path) -> None:
    from dicom_node.index.models import JobState

    engine, factory, job_id, _state, cfg = _run(tmp_path, ct_dirs, blocky,
                                                {"model": "blocky", "max_noise_ratio": 1.2, "noise_action": "hold"})
    with factory() as s:
        first = json.loads(s.get(Job, job_id).quality)
        s.get(Job, job_id).state = JobState.queued  # redelivered: every slice is already derived
        s.commit()
    assert run_job(cfg, factory, job_id, "cpu", "t2") == "done"
    with factory() as s:
        job = s.get(Job, job_id)
        again = json.loads(job.quality)
        assert job.held and again["slices"] == first["slices"] and again["over"] == 2
    assert _outbox_states(factory, job_id) == [OutboxState.held] * 2
    engine.dispose()
