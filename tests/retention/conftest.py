"""An archive of real CT slices (fresh UIDs) indexed the way the node indexes them, with jobs,
derived series and outbox rows in chosen states; on SQLite and PostgreSQL."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.index.db import make_engine, session_factory
from dicom_node.index.migrate import upgrade
from dicom_node.index.models import (
    Instance,
    Job,
    JobState,
    Outbox,
    OutboxState,
    Series,
    SeriesState,
    utcnow,
)
from dicom_node.ingest import store_datasets
from dicom_node.storage import resolve_in
from tests.dicom_node.conftest import database_url, pg_url

__all__ = ["Archive", "database_url", "fresh_series", "orphan_files", "pg_url", "rows_without_file"]


def fresh_series(slices: list[Path], study_uid: str | None = None) -> list[Dataset]:
    """The slices as one new series: fresh study (unless given), series and SOP Instance UIDs."""
    study_uid = study_uid or generate_uid()
    series_uid = generate_uid()
    datasets = []
    for path in slices:
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        datasets.append(ds)
    return datasets


def rows_without_file(factory: sessionmaker[Session], storage: Path) -> list[str]:
    """Instance rows whose file is missing. A row seen before a recycle's commit and its file
    unlinked after it is no fault: a missing file counts only if its row is still there."""
    with factory() as s:
        paths = list(s.scalars(select(Instance.file_path)))
    missing = [p for p in paths if not resolve_in(storage, p).is_file()]
    if not missing:
        return []
    with factory() as s:
        still = set(s.scalars(select(Instance.file_path).where(Instance.file_path.in_(missing))))
    return [f"row without file: {p}" for p in missing if p in still]


def orphan_files(factory: sessionmaker[Session], storage: Path) -> list[str]:
    """.dcm files in storage that no instance row names."""
    with factory() as s:
        paths = set(s.scalars(select(Instance.file_path)))
    on_disk = {str(f.relative_to(storage)) for f in storage.rglob("*.dcm")}
    return [f"orphan file: {p}" for p in sorted(on_disk - paths)]


class Archive:
    """A storage folder and its index, filled with real CT slices."""

    def __init__(self, url: str, storage: Path, slices: list[Path]) -> None:
        self.url, self.storage, self.slices = url, storage, slices
        self.engine = make_engine(url)
        upgrade(url, self.engine)
        self.factory: sessionmaker[Session] = session_factory(self.engine)

    def series(self, n: int = 2, derived_from_job: int | None = None, study_uid: str | None = None) -> int:
        """Store `n` slices as a new series (fresh UIDs); its pk. Originals end routed, derived stable."""
        datasets = fresh_series(self.slices[:n], study_uid)
        series_uid = datasets[0].SeriesInstanceUID
        store_datasets(self.factory, self.storage, datasets, "PACS", derived_from_job=derived_from_job)
        state = SeriesState.routed if derived_from_job is None else SeriesState.stable
        with self.factory.begin() as s:
            pk = s.scalar(select(Series.id).where(Series.series_uid == series_uid))
            s.execute(update(Series).where(Series.id == pk).values(state=state))
        return int(pk)

    def job(self, series_pk: int, state: JobState = JobState.done) -> int:
        with self.factory.begin() as s:
            n = s.scalar(select(func.count()).select_from(Job))
            job = Job(series_pk=series_pk, rule_name=f"rule{n}", model="bicubic", scale=2, state=state,
                      finished_at=utcnow() if state not in (JobState.queued, JobState.running) else None)
            s.add(job)
            s.flush()
            return int(job.id)

    def outbox(self, series_pk: int, state: OutboxState = OutboxState.delivered, job: int | None = None,
               destination: str = "PACS") -> None:
        with self.factory.begin() as s:
            for inst in s.scalars(select(Instance.id).where(Instance.series_pk == series_pk)):
                s.add(Outbox(instance_pk=inst, destination=destination, job_pk=job, state=state,
                             delivered_at=utcnow() if state == OutboxState.delivered else None))

    def pipeline(self, n: int = 2) -> tuple[int, int, int]:
        """A source series, its finished job and its delivered derived series: (source, job, derived)."""
        src = self.series(n)
        job = self.job(src)
        derived = self.series(n, derived_from_job=job)
        self.outbox(derived, job=job)
        return src, job, derived

    def problems(self) -> list[str]:
        """Index rows without their file, and .dcm files no row names (orphans)."""
        return rows_without_file(self.factory, self.storage) + orphan_files(self.factory, self.storage)

    def close(self) -> None:
        self.engine.dispose()


@pytest.fixture
def ct_slices(ct_dirs: list[Path]) -> list[Path]:
    folder = next(d for d in ct_dirs if d.name.startswith("lung-pet-ct-dx"))
    return sorted(folder.glob("*.dcm"))[:8]


@pytest.fixture
def archive(database_url: str, tmp_path: Path, ct_slices: list[Path]) -> Iterator[Archive]:
    a = Archive(database_url, tmp_path / "storage", ct_slices)
    yield a
    a.close()
