"""A job hands its memory back when it ends (done or failed), so an idle worker does not sit at its
largest job's peak RSS (issue 15: 11.7 GB kept after a 512² job)."""
from __future__ import annotations

from pathlib import Path

import pytest

from dicom_node.pipeline import route_series
from tests.pipeline.test_jobs import make_cfg, stored  # noqa: F401 - fixture
from workers import model_cache, process
from workers.process import run_job


def test_memory_is_given_back_after_a_job(tmp_path: Path, stored, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    factory, series_pk, _ = stored
    cfg = make_cfg(tmp_path, [{"match": {"modality": "CT"}, "model": "bicubic"}])
    (job_id,) = route_series(cfg, factory, series_pk)
    calls: list[int] = []
    monkeypatch.setattr(process, "release_memory", lambda: calls.append(job_id) or 0)
    model_cache.clear()
    assert run_job(cfg, factory, job_id, "cpu", "t1") == "done"
    assert calls == [job_id]


def test_memory_is_given_back_after_a_failing_job(tmp_path: Path, stored, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    factory, series_pk, _ = stored
    cfg = make_cfg(tmp_path, [{"match": {"modality": "CT"}, "model": "bicubic"}])
    (job_id,) = route_series(cfg, factory, series_pk)
    calls: list[int] = []
    monkeypatch.setattr(process, "release_memory", lambda: calls.append(job_id) or 0)

    def unloadable(*_: object) -> None:
        raise process.PermanentJobError("model cannot be loaded")

    monkeypatch.setattr(process, "_checked_model", unloadable)
    with pytest.raises(process.PermanentJobError):
        run_job(cfg, factory, job_id, "cpu", "t1")
    assert calls == [job_id]
