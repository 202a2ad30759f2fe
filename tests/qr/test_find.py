"""C-FIND matching (PS3.4 C.2.2.2) against a real index, on SQLite and on PostgreSQL."""
from __future__ import annotations

from typing import Any

import pytest
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from sqlalchemy import select

from dicom_node.index.models import Patient, Series, Study
from dicom_node.qr.attributes import Model
from dicom_node.qr.find import FindOutcome, find
from dicom_node.qr.matching import QueryError, parse_condition
from dicom_node.qr.on_demand import VirtualSeries
from dicom_node.qr.query import parse_query
from tests.qr.conftest import Catalogue


def ident(level: str, **keys: Any) -> Dataset:
    """An identifier as it arrives off the wire: raw elements, decoded only when read."""
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        tag = tag_for_keyword(keyword)
        ds[tag] = RawDataElement(Tag(tag), dictionary_VR(tag), len(value), value.encode("utf-8"), 0, False, True)
    if any(not str(v).isascii() for v in keys.values()):
        ds.SpecificCharacterSet = "ISO_IR 192"
    return ds


def results(cat: Catalogue, identifier: Dataset, model: Model = Model.STUDY_ROOT, **kw: Any) -> list[Dataset]:
    with cat.sessions() as session:
        return list(find(session, parse_query(identifier, model), **kw))


def uids(cat: Catalogue, found: list[Dataset], keyword: str) -> set[str]:
    names = {v: k for k, v in cat.uids.items()}
    return {names[str(ds[keyword].value)] for ds in found}


def test_universal_returns_all_studies_with_counts(catalogue: Catalogue) -> None:
    found = results(catalogue, ident("STUDY", StudyInstanceUID="", PatientName="", ModalitiesInStudy="",
                                     NumberOfStudyRelatedSeries="", NumberOfStudyRelatedInstances=""))
    assert uids(catalogue, found, "StudyInstanceUID") == {"A", "B", "C", "D"}
    by = {str(ds.StudyInstanceUID): ds for ds in found}
    a = by[catalogue.uids["A"]]
    assert a.NumberOfStudyRelatedSeries == 2 and a.NumberOfStudyRelatedInstances == 5
    assert list(a.ModalitiesInStudy) == ["CT"] or a.ModalitiesInStudy == "CT"
    assert by[catalogue.uids["C"]].NumberOfStudyRelatedSeries == 2  # derived series counts like any
    assert all(ds.QueryRetrieveLevel == "STUDY" and "RetrieveAETitle" not in ds for ds in found)  # no AE given


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        ({"PatientName": "DOE*"}, {"A", "B"}),  # PN: case-insensitive
        ({"PatientName": "doe^j?hn"}, {"A"}),
        ({"PatientName": "SMITH_X%Y"}, {"D"}),  # SQL LIKE metacharacters are literal
        ({"PatientName": "SMITH?X?Y"}, {"D"}),
        ({"PatientName": "SMITHAX%Y"}, set()),
        ({"PatientName": "Mü*"}, {"C"}),
        ({"StudyDescription": "CHEST*"}, {"A", "D"}),
        ({"StudyDescription": "chest*"}, set()),  # LO: case-sensitive on every backend
        ({"StudyDate": "20240101-20240228"}, {"A", "B"}),
        ({"StudyDate": "-20231231"}, {"C"}),
        ({"StudyDate": "20240215-"}, {"B", "D"}),
        ({"StudyDate": "20240301"}, {"D"}),
        ({"StudyDate": "2024.03.01"}, {"D"}),
        ({"StudyTime": "1000-1200"}, {"A"}),
        ({"StudyTime": "15"}, {"B"}),  # hour precision: 15:00:00-15:59:59.999999
        ({"StudyTime": "-0900"}, {"C"}),  # empty time (D) is outside every range
        ({"AccessionNumber": "ACC1\\ACC3"}, {"A", "C"}),
        ({"ModalitiesInStudy": "MR"}, {"B"}),
        ({"ModalitiesInStudy": "MR\\CT"}, {"A", "B", "C", "D"}),
        ({"PatientID": "P2"}, {"B"}),
        ({"PatientName": "*", "StudyDate": ""}, {"A", "B", "C", "D"}),
    ],
)
def test_study_level_matching(catalogue: Catalogue, keys: dict[str, str], expected: set[str]) -> None:
    found = results(catalogue, ident("STUDY", StudyInstanceUID="", **keys))
    assert uids(catalogue, found, "StudyInstanceUID") == expected


def test_list_of_uids(catalogue: Catalogue) -> None:
    u = catalogue.uids
    found = results(catalogue, ident("STUDY", StudyInstanceUID=f"{u['A']}\\{u['D']}\\1.2.3.4"))
    assert uids(catalogue, found, "StudyInstanceUID") == {"A", "D"}


def test_series_level_returns_keys_and_counts(catalogue: Catalogue) -> None:
    u = catalogue.uids
    found = results(catalogue, ident("SERIES", StudyInstanceUID=u["C"], SeriesInstanceUID="", Modality="",
                                     SeriesDescription="", SeriesNumber="", NumberOfSeriesRelatedInstances=""))
    assert uids(catalogue, found, "SeriesInstanceUID") == {"C1", "C2"}
    derived = next(ds for ds in found if ds.SeriesInstanceUID == u["C2"])
    assert derived.SeriesDescription == "SRx4 hat: AXIAL 5.0" and derived.SeriesNumber == 1003
    assert derived.NumberOfSeriesRelatedInstances == 1 and derived.Modality == "CT"


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        ({"Modality": "MR"}, {"B1"}),
        ({"SeriesDescription": "AXIAL*"}, {"A1", "C1"}),
        ({"SeriesDescription": "*AXIAL*"}, {"A1", "C1", "C2"}),
        ({"SeriesDescription": "50% DOSE_[A]"}, {"D1"}),  # GLOB metacharacters are literal
        ({"SeriesDescription": "50? DOSE?[A]"}, {"D1"}),
        ({"SeriesNumber": "2"}, {"A2"}),
        ({"SeriesNumber": "1\\3"}, {"A1", "B1", "C1", "D1"}),
        ({"StudyDate": "20240101-20240215", "Modality": "CT"}, {"A1", "A2"}),
    ],
)
def test_series_level_matching(catalogue: Catalogue, keys: dict[str, str], expected: set[str]) -> None:
    found = results(catalogue, ident("SERIES", SeriesInstanceUID="", **keys))
    assert uids(catalogue, found, "SeriesInstanceUID") == expected


def test_image_level_under_a_series(catalogue: Catalogue) -> None:
    u = catalogue.uids
    found = results(catalogue, ident("IMAGE", StudyInstanceUID=u["A"], SeriesInstanceUID=u["A1"],
                                     SOPInstanceUID="", InstanceNumber="", SOPClassUID=""))
    assert [str(ds.SOPInstanceUID) for ds in found] == [u["A1.1"], u["A1.2"], u["A1.3"]]
    assert [ds.InstanceNumber for ds in found] == [1, 2, 3]


def test_patient_root_patient_level(catalogue: Catalogue) -> None:
    found = results(catalogue, ident("PATIENT", PatientID="", PatientName="doe*", NumberOfPatientRelatedStudies="",
                                     NumberOfPatientRelatedInstances=""), Model.PATIENT_ROOT)
    by = {str(ds.PatientID): ds for ds in found}
    assert set(by) == {"P1", "P2"}
    assert by["P1"].NumberOfPatientRelatedStudies == 1 and by["P1"].NumberOfPatientRelatedInstances == 5


def test_keys_below_the_level_are_not_returned(catalogue: Catalogue) -> None:
    found = results(catalogue, ident("STUDY", StudyInstanceUID="", Modality="MR", SOPInstanceUID=""))
    assert len(found) == 4  # Modality is a SERIES key: ignored at STUDY level, not matched on
    assert all("Modality" not in ds and "SOPInstanceUID" not in ds for ds in found)


def test_non_ascii_values_come_back_as_utf8(catalogue: Catalogue) -> None:
    found = results(catalogue, ident("STUDY", PatientName="Mü*"))
    assert str(found[0].PatientName) == "Müller^Hans" and found[0].SpecificCharacterSet == "ISO_IR 192"


def test_result_limit(catalogue: Catalogue) -> None:
    outcome = FindOutcome()
    found = results(catalogue, ident("SERIES", SeriesInstanceUID=""), limit=4, outcome=outcome)
    assert len(found) == 4 and outcome.truncated
    outcome = FindOutcome()
    assert len(results(catalogue, ident("SERIES", SeriesInstanceUID=""), limit=6, outcome=outcome)) == 6
    assert not outcome.truncated


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"StudyDate": "2024-01-01-2"}, "StudyDate"),
        ({"StudyDate": "20240301-20240101"}, "start after its end"),
        ({"StudyTime": "25:00"}, "StudyTime"),
        ({"SeriesNumber": "x"}, "SeriesNumber"),
    ],
)
def test_bad_values_are_refused_with_the_key_named(keys: dict[str, str], message: str) -> None:
    with pytest.raises(QueryError, match=message):
        parse_query(ident("SERIES", **keys), Model.STUDY_ROOT)


def test_bad_levels_are_refused() -> None:
    with pytest.raises(QueryError, match="QueryRetrieveLevel"):
        parse_query(Dataset(), Model.STUDY_ROOT)
    with pytest.raises(QueryError, match="PATIENT"):
        parse_query(ident("PATIENT"), Model.STUDY_ROOT)
    with pytest.raises(QueryError, match="not one of"):
        parse_query(ident("FRAME"), Model.STUDY_ROOT)


# The Python evaluation (used for virtual on-demand series) must agree with the SQL one.
AGREEMENT = [
    ("PatientName", Patient.patient_name, "PN", ["DOE*", "*^J*", "smith_x%y", "M?ller*", "*", "doe^jane\\SMITH*"]),
    ("StudyDate", Study.study_date, "DA", ["20240101-20240228", "-20231231", "20240215-", "20240301"]),
    ("StudyTime", Study.study_time, "TM", ["1000-1200", "15", "-0900", "0800-"]),
    ("SeriesDescription", Series.series_description, "LO",
     ["AXIAL*", "*axial*", "50% DOSE_[A]", "50? DOSE?[A]", "*[A]", "CORONAL\\T1*"]),
    ("Modality", Series.modality, "CS", ["C?", "M*", "ct"]),
]


@pytest.mark.parametrize(("keyword", "column", "vr", "values"), AGREEMENT)
def test_sql_and_python_matching_agree(catalogue: Catalogue, keyword: str, column: Any, vr: str,
                                       values: list[str]) -> None:
    with catalogue.sessions() as session:
        stored = session.scalars(select(column).distinct()).all()
        for value in values:
            cond = parse_condition(value, vr, keyword)
            by_sql = set(session.scalars(select(column).distinct().where(cond.sql(column))).all())
            by_python = {v for v in stored if cond.test(v)}
            assert by_sql == by_python, (keyword, value)


class _Provider:
    """Test double for the pipeline side of the on-demand contract: one virtual series per CT source."""

    def virtual_series(self, session: Any, source_series_uids: list[str]) -> list[VirtualSeries]:
        rows = session.execute(select(Series.series_uid, Series.series_description).where(
            Series.series_uid.in_(source_series_uids), Series.modality == "CT")).all()
        return [VirtualSeries(uid + ".99", uid, "CT", f"SRx2 demo: {desc}", 1002, 7, "demo") for uid, desc in rows]

    def lookup(self, session: Any, series_uid: str) -> VirtualSeries | None:
        return None

    def materialise(self, series_uid: str) -> Any:
        return iter(())


def test_on_demand_virtual_series_are_listed_and_filtered(catalogue: Catalogue) -> None:
    u = catalogue.uids
    found = results(catalogue, ident("SERIES", StudyInstanceUID=u["A"], SeriesInstanceUID="", SeriesDescription="",
                                     NumberOfSeriesRelatedInstances=""), provider=_Provider())
    by = {str(ds.SeriesInstanceUID): ds for ds in found}
    assert set(by) == {u["A1"], u["A2"], u["A1"] + ".99", u["A2"] + ".99"}
    assert by[u["A1"] + ".99"].SeriesDescription == "SRx2 demo: AXIAL 1.0"
    assert by[u["A1"] + ".99"].NumberOfSeriesRelatedInstances == 7
    # series-level keys filter virtual series too; study-level keys select their sources
    found = results(catalogue, ident("SERIES", StudyDate="20240101", SeriesDescription="SRx2*"), provider=_Provider())
    assert found and all(ds.QueryRetrieveLevel == "SERIES" and ds.StudyInstanceUID == u["A"] for ds in found)
    assert {str(ds.SeriesInstanceUID) for ds in found} == {u["A1"] + ".99", u["A2"] + ".99"}
    # a derived series is never a source (no upscaling of upscaled series)
    found = results(catalogue, ident("SERIES", StudyInstanceUID=u["C"], SeriesInstanceUID=""), provider=_Provider())
    assert {str(ds.SeriesInstanceUID) for ds in found} == {u["C1"], u["C2"], u["C1"] + ".99"}
