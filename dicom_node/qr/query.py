"""A C-FIND/C-MOVE/C-GET identifier turned into conditions, and conditions turned into one SELECT.

`parse_query` validates the identifier against an information model; `select_rows` builds the
SQL for rows at any level (IMAGE rows for a retrieve, the query level for a find), joining the
parent tables so that keys of every level above can be matched.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

from pydicom.dataset import Dataset
from sqlalchemy import ColumnElement, Select, exists, select

from dicom_node.index.models import Instance, Patient, Series, Study
from dicom_node.qr.attributes import (
    ATTRIBUTES,
    CONTROL_KEYWORDS,
    RETURN_ONLY,
    TABLE_OF_LEVEL,
    UNIQUE_KEY,
    Attr,
    Level,
    Model,
)
from dicom_node.qr.matching import Condition, QueryError, parse_condition


@dataclass
class Query:
    """What an identifier asks for: the level, the non-universal conditions, the keys to return."""

    model: Model
    level: Level
    conditions: dict[str, Condition] = field(default_factory=dict)
    return_keys: list[str] = field(default_factory=list)
    ignored_keys: list[str] = field(default_factory=list)  # unsupported or below the level


def _raw_value(identifier: Dataset, keyword: str) -> Any:
    try:
        value = identifier[keyword].value
    except (ValueError, TypeError) as exc:  # e.g. IS "x": pydicom converts on access
        raise QueryError(f"{keyword}: value cannot be decoded ({exc})") from None
    if value is None or value == "":
        return None
    return value


def parse_query(identifier: Dataset, model: Model, level_required: bool = True) -> Query:
    """Validate `identifier` for `model` and parse every supported key's matching rule."""
    if "QueryRetrieveLevel" not in identifier or not identifier.QueryRetrieveLevel:
        raise QueryError("QueryRetrieveLevel (0008,0052) is missing")
    try:
        level = Level.parse(str(identifier.QueryRetrieveLevel))
    except KeyError:
        raise QueryError(f"QueryRetrieveLevel {identifier.QueryRetrieveLevel!r} is not one of "
                         "PATIENT, STUDY, SERIES, IMAGE") from None
    if level < model.top:
        raise QueryError(f"QueryRetrieveLevel {level.name} does not exist in the Study Root model")
    query = Query(model=model, level=level)
    for elem in identifier:
        keyword = elem.keyword
        if not keyword or keyword in CONTROL_KEYWORDS:
            continue
        attr = ATTRIBUTES.get(keyword)
        if attr is None or attr.level_in(model) > level or elem.VR == "SQ":
            # Not in the index (or below the level): PS3.4 lets the SCP ignore optional keys.
            query.ignored_keys.append(keyword)
            continue
        query.return_keys.append(keyword)
        if keyword in RETURN_ONLY:
            continue
        condition = parse_condition(_raw_value(identifier, keyword), attr.vr, keyword)
        if not condition.universal:
            query.conditions[keyword] = condition
    # Unique keys of the level and the levels above are always returned: a requester needs them
    # to retrieve what it found, even if it forgot to ask.
    for key_level in range(model.top, level + 1):
        keyword = UNIQUE_KEY[Level(key_level)]
        if keyword not in query.return_keys:
            query.return_keys.append(keyword)
    return query


# Parent joins for each row level; tables above the row level come along for matching.
def _base(row_level: Level, top: Level) -> Select[Any]:
    table = TABLE_OF_LEVEL[row_level]
    stmt = select(table.id.label("pk"))
    if row_level >= Level.IMAGE:
        stmt = stmt.join_from(Instance, Series, Instance.series_pk == Series.id)
    if row_level >= Level.SERIES:
        stmt = stmt.join_from(Series, Study, Series.study_pk == Study.id)
    if row_level >= Level.STUDY:
        stmt = stmt.join_from(Study, Patient, Study.patient_pk == Patient.id)
    return stmt


def _modalities_in_study(condition: Condition) -> Any:
    """A study matches ModalitiesInStudy if any of its series' modality matches."""
    return exists().where(Series.study_pk == Study.id, condition.sql(cast("ColumnElement[Any]", Series.modality)))


def condition_clauses(conditions: dict[str, Condition], row_level: Level) -> list[Any]:
    """WHERE clauses for the conditions that apply at or above `row_level`."""
    clauses = []
    for keyword, condition in conditions.items():
        attr = ATTRIBUTES[keyword]
        if attr.level > row_level:
            continue
        if keyword == "ModalitiesInStudy":
            clauses.append(_modalities_in_study(condition))
        elif attr.column is not None:
            clauses.append(condition.sql(attr.column))
    return clauses


def select_rows(query: Query, row_level: Level, columns: list[Attr] | None = None,
                conditions: dict[str, Condition] | None = None) -> Select[Any]:
    """SELECT pk + the columns of `columns` for rows at `row_level` matching the query."""
    stmt = _base(row_level, query.model.top)
    for attr in columns or []:
        if attr.column is not None and attr.level <= row_level:
            stmt = stmt.add_columns(attr.column.label(attr.keyword))
    stmt = stmt.where(*condition_clauses(query.conditions if conditions is None else conditions, row_level))
    table = TABLE_OF_LEVEL[row_level]
    if row_level is Level.IMAGE:
        return stmt.order_by(Instance.series_pk, Instance.instance_number, Instance.id)
    return stmt.order_by(table.id)
