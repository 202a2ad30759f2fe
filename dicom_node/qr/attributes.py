"""The Query/Retrieve information models: which attribute lives at which level, and where in the index.

Patient Root has PATIENT → STUDY → SERIES → IMAGE; Study Root folds the patient attributes into
STUDY. Each `Attr` names either an index column (matchable and returnable) or a computed value
(a count or ModalitiesInStudy, filled in per batch of result rows by `dicom_node.qr.find`).
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from pydicom.datadict import dictionary_VR, tag_for_keyword

from dicom_node.index.models import Instance, Patient, Series, Study


class Level(enum.IntEnum):
    PATIENT = 0
    STUDY = 1
    SERIES = 2
    IMAGE = 3

    @classmethod
    def parse(cls, text: str) -> Level:
        """The level named by a QueryRetrieveLevel value (raises KeyError if unknown)."""
        return cls[text.strip().upper()]


class Model(enum.Enum):
    PATIENT_ROOT = "PATIENT"
    STUDY_ROOT = "STUDY"

    @property
    def top(self) -> Level:
        return Level.PATIENT if self is Model.PATIENT_ROOT else Level.STUDY


# Rows at each level, and the table whose primary key identifies a row there.
TABLE_OF_LEVEL: dict[Level, type[Patient] | type[Study] | type[Series] | type[Instance]] = {
    Level.PATIENT: Patient, Level.STUDY: Study, Level.SERIES: Series, Level.IMAGE: Instance}
UNIQUE_KEY = {
    Level.PATIENT: "PatientID",
    Level.STUDY: "StudyInstanceUID",
    Level.SERIES: "SeriesInstanceUID",
    Level.IMAGE: "SOPInstanceUID",
}


@dataclass(frozen=True)
class Attr:
    keyword: str
    level: Level  # level in the Patient Root model (Study Root lifts PATIENT to STUDY)
    column: Any = None  # an InstrumentedAttribute of the index, or None for computed values
    computed: bool = False

    @property
    def tag(self) -> int:
        return int(tag_for_keyword(self.keyword))  # type: ignore[arg-type]

    @property
    def vr(self) -> str:
        return dictionary_VR(self.tag)

    def level_in(self, model: Model) -> Level:
        """The level this attribute belongs to in `model`."""
        return max(self.level, model.top)


_ATTRS = [
    # PATIENT
    Attr("PatientName", Level.PATIENT, Patient.patient_name),
    Attr("PatientID", Level.PATIENT, Patient.patient_id),
    Attr("IssuerOfPatientID", Level.PATIENT, Patient.issuer),
    Attr("PatientBirthDate", Level.PATIENT, Patient.birth_date),
    Attr("PatientSex", Level.PATIENT, Patient.sex),
    Attr("NumberOfPatientRelatedStudies", Level.PATIENT, computed=True),
    Attr("NumberOfPatientRelatedSeries", Level.PATIENT, computed=True),
    Attr("NumberOfPatientRelatedInstances", Level.PATIENT, computed=True),
    # STUDY
    Attr("StudyInstanceUID", Level.STUDY, Study.study_uid),
    Attr("StudyDate", Level.STUDY, Study.study_date),
    Attr("StudyTime", Level.STUDY, Study.study_time),
    Attr("AccessionNumber", Level.STUDY, Study.accession_number),
    Attr("StudyID", Level.STUDY, Study.study_id),
    Attr("StudyDescription", Level.STUDY, Study.study_description),
    Attr("ReferringPhysicianName", Level.STUDY, Study.referring_physician),
    Attr("ModalitiesInStudy", Level.STUDY, computed=True),
    Attr("NumberOfStudyRelatedSeries", Level.STUDY, computed=True),
    Attr("NumberOfStudyRelatedInstances", Level.STUDY, computed=True),
    # SERIES
    Attr("SeriesInstanceUID", Level.SERIES, Series.series_uid),
    Attr("Modality", Level.SERIES, Series.modality),
    Attr("SeriesNumber", Level.SERIES, Series.series_number),
    Attr("SeriesDescription", Level.SERIES, Series.series_description),
    Attr("BodyPartExamined", Level.SERIES, Series.body_part),
    Attr("NumberOfSeriesRelatedInstances", Level.SERIES, computed=True),
    # IMAGE
    Attr("SOPInstanceUID", Level.IMAGE, Instance.sop_instance_uid),
    Attr("SOPClassUID", Level.IMAGE, Instance.sop_class_uid),
    Attr("InstanceNumber", Level.IMAGE, Instance.instance_number),
    Attr("Rows", Level.IMAGE, Instance.rows),
    Attr("Columns", Level.IMAGE, Instance.columns),
    Attr("NumberOfFrames", Level.IMAGE, Instance.number_of_frames),
    Attr("AvailableTransferSyntaxUID", Level.IMAGE, Instance.transfer_syntax_uid),
]
ATTRIBUTES: dict[str, Attr] = {a.keyword: a for a in _ATTRS}

# Keys that are answered but never matched on (PS3.4 C.3: "return key only" / not supported).
RETURN_ONLY = frozenset(
    {
        "NumberOfPatientRelatedStudies",
        "NumberOfPatientRelatedSeries",
        "NumberOfPatientRelatedInstances",
        "NumberOfStudyRelatedSeries",
        "NumberOfStudyRelatedInstances",
        "NumberOfSeriesRelatedInstances",
    }
)

# Elements of the identifier that steer the query itself rather than select entities.
CONTROL_KEYWORDS = frozenset(
    {"QueryRetrieveLevel", "SpecificCharacterSet", "RetrieveAETitle", "InstanceAvailability", "TimezoneOffsetFromUTC"}
)

_MODEL_OF_SOP_CLASS = {
    "1.2.840.10008.5.1.4.1.2.1.1": Model.PATIENT_ROOT,  # FIND
    "1.2.840.10008.5.1.4.1.2.1.2": Model.PATIENT_ROOT,  # MOVE
    "1.2.840.10008.5.1.4.1.2.1.3": Model.PATIENT_ROOT,  # GET
    "1.2.840.10008.5.1.4.1.2.2.1": Model.STUDY_ROOT,
    "1.2.840.10008.5.1.4.1.2.2.2": Model.STUDY_ROOT,
    "1.2.840.10008.5.1.4.1.2.2.3": Model.STUDY_ROOT,
}


def model_of_sop_class(sop_class_uid: str | None) -> Model:
    """The information model of a Patient/Study Root FIND, MOVE or GET SOP class UID."""
    return _MODEL_OF_SOP_CLASS[str(sop_class_uid)]
