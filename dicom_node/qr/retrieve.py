"""C-MOVE/C-GET: which instances an identifier names, and reading them for the C-STORE sub-operations.

The identifier is matched with the same conditions as C-FIND (so a retrieve of a derived series
works like any other), but rows are always IMAGE rows. A SeriesInstanceUID that the index does
not know may be a virtual on-demand series; `plan_retrieve` asks the provider about those.
"""
from __future__ import annotations

import logging
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from sqlalchemy import select
from sqlalchemy.orm import Session

from dicom_node.index.models import Instance, Series
from dicom_node.qr.attributes import ATTRIBUTES, Level
from dicom_node.qr.matching import AnyOf, Exact
from dicom_node.qr.on_demand import OnDemandProvider, ProducedInstance, VirtualSeries
from dicom_node.qr.query import Query, select_rows
from dicom_node.storage import resolve_in

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StoredInstance:
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    path: Path


@dataclass
class RetrievePlan:
    """What a C-MOVE/C-GET will send: stored instances, then any on-demand series."""

    stored: list[StoredInstance] = field(default_factory=list)
    virtual: list[VirtualSeries] = field(default_factory=list)

    @property
    def count(self) -> int:
        """Number of C-STORE sub-operations (virtual series count their expected instances)."""
        return len(self.stored) + sum(v.expected_instances for v in self.virtual)


def _requested_series_uids(query: Query) -> list[str]:
    condition = query.conditions.get("SeriesInstanceUID")
    if isinstance(condition, Exact):
        return [condition.value]
    if isinstance(condition, AnyOf):
        return [c.value for c in condition.options if isinstance(c, Exact)]
    return []


def plan_retrieve(session: Session, query: Query, storage_dir: Path, provider: OnDemandProvider) -> RetrievePlan:
    """The instances (and virtual series) that the retrieve identifier `query` matches."""
    columns = [ATTRIBUTES[k] for k in ("SOPInstanceUID", "SOPClassUID", "AvailableTransferSyntaxUID")]
    stmt = select_rows(query, Level.IMAGE, columns).add_columns(Instance.file_path)
    plan = RetrievePlan()
    for row in session.execute(stmt):
        plan.stored.append(StoredInstance(row.SOPInstanceUID, row.SOPClassUID, row.AvailableTransferSyntaxUID,
                                          resolve_in(storage_dir, row.file_path)))
    wanted = _requested_series_uids(query)
    if wanted and query.level >= Level.SERIES:
        known = set(session.scalars(select(Series.series_uid).where(Series.series_uid.in_(wanted))))
        for uid in wanted:
            if uid not in known and (virtual := provider.lookup(session, uid)) is not None:
                plan.virtual.append(virtual)
    return plan


def read_instance(path: Path) -> Dataset:
    """The stored file as a Dataset for a C-STORE sub-operation (file meta kept for the context)."""
    return dcmread(path)


def read_ahead(paths: list[Path], depth: int = 2) -> Iterator[tuple[Path, Dataset | Exception]]:
    """Read files in a helper thread while the caller sends the previous one (disk/parse ∥ network).

    Each item is (path, dataset) or (path, the exception reading it raised), in order.
    """
    if not paths:
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="qr-read") as pool:
        pending: list[Future[Dataset]] = [pool.submit(read_instance, p) for p in paths[:depth]]
        for i, path in enumerate(paths):
            future = pending.pop(0)
            if i + depth < len(paths):
                pending.append(pool.submit(read_instance, paths[i + depth]))
            try:
                yield path, future.result()
            except Exception as exc:  # a damaged file fails one sub-operation, not the retrieve
                yield path, exc


def produced_datasets(provider: OnDemandProvider, virtual: VirtualSeries) -> Iterator[tuple[ProducedInstance, Dataset | Exception]]:
    """Instances of an on-demand series as the job produces them."""
    for produced in provider.materialise(virtual.series_uid):
        try:
            yield produced, read_instance(produced.path)
        except Exception as exc:
            yield produced, exc
