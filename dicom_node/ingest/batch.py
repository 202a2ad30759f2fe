"""Several instances in one transaction: `store_encoded_many` (bytes) and `store_datasets`."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from pydicom.dataset import Dataset
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.ingest.files import remove_new, write_instances
from dicom_node.ingest.index_writer import _commit_with_retry
from dicom_node.ingest.parse import encode_part10
from dicom_node.ingest.store import StoreResult, _check, _index_checked

T = TypeVar("T")


def store_encoded_many(
    factory: sessionmaker[Session],
    storage_dir: Path,
    items: Sequence[bytes],
    sender_ae: str,
    derived_from_job: int | None = None,
    also: Callable[[Session, list[StoreResult]], T] | None = None,
) -> tuple[list[StoreResult], T | None]:
    """Store several instances at once: each file written and fsynced, one directory fsync per
    directory, and every index row (plus whatever `also` adds, e.g. outbox rows) in one commit.

    All or nothing, like `store_encoded`: on any failure the new files are removed and no row
    is committed. Returns the results and `also`'s return value.
    """
    checked = [_check(factory, storage_dir, data) for data in items]
    new = [c.target for c in checked if not c.target.exists()]
    try:
        sizes = write_instances([c.target for c in checked], items, storage_dir)

        def work(session: Session) -> tuple[list[StoreResult], T | None]:
            results = [_index_checked(session, c, size, sender_ae, derived_from_job) for c, size in zip(checked, sizes)]
            return results, (also(session, results) if also is not None else None)

        return _commit_with_retry(factory, work)
    except BaseException:
        remove_new(new)
        raise


def store_datasets(
    factory: sessionmaker[Session],
    storage_dir: Path,
    datasets: Sequence[Dataset],
    sender_ae: str = "",
    derived_from_job: int | None = None,
    also: Callable[[Session, list[StoreResult]], T] | None = None,
) -> tuple[list[StoreResult], T | None]:
    """Write and index several pydicom Datasets in one transaction (see `store_encoded_many`)."""
    return store_encoded_many(factory, storage_dir, [encode_part10(ds) for ds in datasets], sender_ae,
                              derived_from_job, also)
