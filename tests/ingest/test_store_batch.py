"""store_datasets: several instances, their extra rows and one commit; all or nothing."""
from __future__ import annotations

from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from dicom_node.index.db import make_engine, session_factory
from dicom_node.index.migrate import upgrade
from dicom_node.index.models import Instance, Outbox
from dicom_node.ingest import BadUID, StoreResult, store_datasets
from dicom_node.outbox.queue import enqueue


def _slices(ct_dirs: list[Path], n: int):  # type: ignore[no-untyped-def]
    series_uid = generate_uid()
    out = []
    for f in sorted(ct_dirs[0].glob("*.dcm"))[:n]:
        ds = dcmread(f)
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = generate_uid()
        out.append(ds)
    return out


def _count(factory, model) -> int:  # type: ignore[no-untyped-def]
    with factory() as s:
        return int(s.scalar(select(func.count()).select_from(model)))


def test_batch_is_one_transaction_with_its_extra_rows(tmp_path: Path, database_url: str, ct_dirs: list[Path]) -> None:
    engine = make_engine(database_url)
    upgrade(database_url, engine)
    factory = session_factory(engine)
    storage = tmp_path / "storage"
    datasets = _slices(ct_dirs, 3)

    def queue(session: Session, results: list[StoreResult]) -> int:
        return enqueue(session, [r.instance_pk for r in results], ["PACS", "VIEWER"])

    results, added = store_datasets(factory, storage, datasets, "SRNODE", also=queue)
    assert added == 6
    assert [r.duplicate for r in results] == [False] * 3
    assert _count(factory, Instance) == 3 and _count(factory, Outbox) == 6
    for ds, r in zip(datasets, results):
        stored = dcmread(storage / r.rel_path)
        assert stored.SOPInstanceUID == ds.SOPInstanceUID
        assert (stored.PixelData == ds.PixelData)
    # The same batch again replaces files and rows; the outbox pairs already exist.
    results, added = store_datasets(factory, storage, datasets, "SRNODE", also=queue)
    assert [r.duplicate for r in results] == [True] * 3 and added == 0
    assert _count(factory, Instance) == 3
    engine.dispose()


def test_a_refused_item_or_a_failing_extra_leaves_nothing(tmp_path: Path, database_url: str,
                                                         ct_dirs: list[Path]) -> None:
    engine = make_engine(database_url)
    upgrade(database_url, engine)
    factory = session_factory(engine)
    storage = tmp_path / "storage"
    good, bad = _slices(ct_dirs, 2)
    bad.SOPInstanceUID = "../../escape"
    with pytest.raises(BadUID):
        store_datasets(factory, storage, [good, bad], "SRNODE")
    assert _count(factory, Instance) == 0

    def boom(session: Session, results: list[StoreResult]) -> None:
        raise RuntimeError("extra rows failed")

    fresh = _slices(ct_dirs, 2)
    with pytest.raises(RuntimeError, match="extra rows failed"):
        store_datasets(factory, storage, fresh, "SRNODE", also=boom)
    assert _count(factory, Instance) == 0
    assert not [p for p in storage.rglob("*") if p.is_file()], "files of an uncommitted batch stay on disk"
    assert not (tmp_path / "escape").exists() and not (tmp_path.parent / "escape.dcm").exists()
    engine.dispose()
