"""C-FIND: answer a query from the index, one response dataset per matching entity.

`find` is a generator of datasets, so the handler can stop (cancel) between any two results and
never holds more than one batch in memory. Counts and ModalitiesInStudy are computed for a batch
of rows at a time with GROUP BY queries, which every SQL backend runs on the foreign-key indexes.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from dicom_node.index.models import Instance, Series, Study
from dicom_node.qr.attributes import ATTRIBUTES, Attr, Level
from dicom_node.qr.on_demand import NO_ON_DEMAND, OnDemandProvider, VirtualSeries
from dicom_node.qr.query import Query, select_rows

BATCH = 500


@dataclass
class FindOutcome:
    """Set by `find` when it stops early: how many entities matched beyond the limit."""

    truncated: bool = False


def _grouped_counts(session: Session, keyword: str, pks: list[int]) -> dict[int, Any]:
    """One computed attribute for a batch of row primary keys."""
    if keyword == "NumberOfSeriesRelatedInstances":
        stmt = select(Instance.series_pk, func.count()).where(Instance.series_pk.in_(pks)).group_by(Instance.series_pk)
    elif keyword == "NumberOfStudyRelatedSeries":
        stmt = select(Series.study_pk, func.count()).where(Series.study_pk.in_(pks)).group_by(Series.study_pk)
    elif keyword == "NumberOfStudyRelatedInstances":
        stmt = (select(Series.study_pk, func.count(Instance.id)).join(Instance, Instance.series_pk == Series.id)
                .where(Series.study_pk.in_(pks)).group_by(Series.study_pk))
    elif keyword == "NumberOfPatientRelatedStudies":
        stmt = select(Study.patient_pk, func.count()).where(Study.patient_pk.in_(pks)).group_by(Study.patient_pk)
    elif keyword == "NumberOfPatientRelatedSeries":
        stmt = (select(Study.patient_pk, func.count(Series.id)).join(Series, Series.study_pk == Study.id)
                .where(Study.patient_pk.in_(pks)).group_by(Study.patient_pk))
    elif keyword == "NumberOfPatientRelatedInstances":
        stmt = (select(Study.patient_pk, func.count(Instance.id)).join(Series, Series.study_pk == Study.id)
                .join(Instance, Instance.series_pk == Series.id)
                .where(Study.patient_pk.in_(pks)).group_by(Study.patient_pk))
    elif keyword == "ModalitiesInStudy":
        found: dict[int, list[str]] = defaultdict(list)
        modalities = (select(Series.study_pk, Series.modality).where(Series.study_pk.in_(pks), Series.modality != "")
                      .group_by(Series.study_pk, Series.modality).order_by(Series.study_pk, Series.modality))
        for pk, modality in session.execute(modalities):
            found[pk].append(modality)
        return dict(found)
    else:  # pragma: no cover - ATTRIBUTES and this table are edited together
        raise KeyError(keyword)
    return {pk: n for pk, n in session.execute(stmt)}


def _value_for_dicom(attr: Attr, value: Any) -> Any:
    if value is None:
        return None
    if attr.vr in ("IS", "US", "UL") and value == "":
        return None
    if attr.vr == "IS":
        return str(value)
    return value


def response_dataset(query: Query, values: dict[str, Any], retrieve_ae: str) -> Dataset:
    """The identifier returned for one entity: the requested keys, in tag order."""
    ds = Dataset()
    ds.QueryRetrieveLevel = query.level.name
    non_ascii = False
    for keyword in query.return_keys:
        attr = ATTRIBUTES[keyword]
        value = _value_for_dicom(attr, values.get(keyword))
        if isinstance(value, str) and not value.isascii():
            non_ascii = True
        ds.add_new(attr.tag, attr.vr, value)
    if non_ascii:
        ds.SpecificCharacterSet = "ISO_IR 192"
    if retrieve_ae:
        ds.RetrieveAETitle = retrieve_ae
    return ds


def _rows(session: Session, query: Query) -> Iterator[dict[str, Any]]:
    columns = [ATTRIBUTES[k] for k in query.return_keys]
    computed = [a.keyword for a in columns if a.computed]
    stmt = select_rows(query, query.level, columns)
    result = session.execute(stmt.execution_options(yield_per=BATCH))
    for partition in result.partitions():
        rows = [dict(row._mapping) for row in partition]
        pks = [row["pk"] for row in rows]
        for keyword in computed:
            by_pk = _grouped_counts(session, keyword, pks)
            default: Any = [] if keyword == "ModalitiesInStudy" else 0
            for row in rows:
                row[keyword] = by_pk.get(row["pk"], default)
        yield from rows


def _virtual_rows(session: Session, query: Query, provider: OnDemandProvider) -> Iterator[dict[str, Any]]:
    """Derived series that on-demand rules would produce, matched against the series-level keys."""
    series_keys = {k: c for k, c in query.conditions.items() if ATTRIBUTES[k].level is Level.SERIES}
    upper = {k: c for k, c in query.conditions.items() if k not in series_keys}
    columns = [ATTRIBUTES[k] for k in query.return_keys] + [ATTRIBUTES["SeriesInstanceUID"]]
    stmt = select_rows(query, Level.SERIES, columns, conditions=upper).where(Series.derived_from_job.is_(None))
    sources: dict[str, dict[str, Any]] = {}
    for row in session.execute(stmt):
        sources[row.SeriesInstanceUID] = dict(row._mapping)
    if not sources:
        return
    virtual = provider.virtual_series(session, list(sources))
    virtual_uids = [v.series_uid for v in virtual]
    present = set(session.scalars(select(Series.series_uid).where(Series.series_uid.in_(virtual_uids))))
    for v in virtual:
        if v.series_uid in present:
            continue  # already produced: the index answers for it like for any series
        values = {**sources[v.source_series_uid], **_virtual_values(v)}
        if all(c.test(values.get(k)) for k, c in series_keys.items()):
            yield values


def _virtual_values(v: VirtualSeries) -> dict[str, Any]:
    return {
        "SeriesInstanceUID": v.series_uid,
        "Modality": v.modality,
        "SeriesDescription": v.series_description,
        "SeriesNumber": v.series_number,
        "NumberOfSeriesRelatedInstances": v.expected_instances,
    }


def find(session: Session, query: Query, *, limit: int = 0, retrieve_ae: str = "",
         provider: OnDemandProvider = NO_ON_DEMAND, outcome: FindOutcome | None = None) -> Iterator[Dataset]:
    """Yield one response identifier per match (at most `limit` when > 0; see `outcome.truncated`)."""
    sources: Iterable[dict[str, Any]] = _rows(session, query)
    if query.level is Level.SERIES and provider is not NO_ON_DEMAND:
        sources = _chain(sources, lambda: _virtual_rows(session, query, provider))
    for n, values in enumerate(sources):
        if limit and n >= limit:
            if outcome is not None:
                outcome.truncated = True
            return
        yield response_dataset(query, values, retrieve_ae)


def _chain(first: Iterable[dict[str, Any]], later: Any) -> Iterator[dict[str, Any]]:
    yield from first
    yield from later()
