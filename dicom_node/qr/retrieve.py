"""C-MOVE/C-GET: which stored instances (and on-demand series) a retrieve identifier names.

The identifier is matched with the same conditions as C-FIND (so a retrieve of a derived series
works like any other), but rows are always IMAGE rows. A SeriesInstanceUID that the index does
not know may be a virtual on-demand series; `plan_retrieve` asks the provider about those.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pynetdicom.dsutils import split_dataset
from sqlalchemy import select
from sqlalchemy.orm import Session

from dicom_node.dimse.fast_store import StoredFile
from dicom_node.index.models import Instance, Series
from dicom_node.qr.attributes import ATTRIBUTES, Level
from dicom_node.qr.matching import AnyOf, Exact
from dicom_node.qr.on_demand import OnDemandProvider, ProducedInstance, VirtualSeries
from dicom_node.qr.query import Query, select_rows
from dicom_node.storage import resolve_in


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


def produced_file(produced: ProducedInstance) -> StoredFile:
    """An on-demand instance, as the handler yields it (class and syntax from its file meta)."""
    meta, _ = split_dataset(produced.path)
    return StoredFile(str(meta.MediaStorageSOPClassUID), produced.sop_instance_uid, str(meta.TransferSyntaxUID),
                      produced.path)
