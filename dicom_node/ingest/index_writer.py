"""Patient/Study/Series/Instance rows for one stored file: the ORM upsert (`index_instance`), the
hot path for an instance of a series known to exist (statements compiled once, no ORM), and the
retried transaction both run in."""
from __future__ import annotations

import time
from pathlib import PurePosixPath
from typing import Any, cast

from pydicom.dataset import Dataset
from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.engine import Row
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.clock import utcnow
from dicom_node.index.models import Instance, Patient, Series, SeriesState, Study
from dicom_node.ingest.errors import DuplicateConflict
from dicom_node.ingest.header import _int, _text, instance_values
from dicom_node.storage import validate_uid


def _index_known_series(session: Session, series_pk: int, ds_header: Dataset, rel_path: str | PurePosixPath,
                        file_size: int, transfer_syntax: str, sender_ae: str) -> tuple[int, bool, bool]:
    """Core-level index of an instance of a series known to exist: (instance pk, duplicate, is_image)."""
    sop_uid = validate_uid(ds_header.get("SOPInstanceUID"), "SOPInstanceUID")
    now = utcnow()
    values = instance_values(ds_header, rel_path, file_size, transfer_syntax, sender_ae, now)
    conn = session.connection()
    existing = conn.execute(_SELECT_INSTANCE, {"sop": sop_uid}).first()
    if existing is not None and existing.series_pk != series_pk:
        raise DuplicateConflict(f"SOPInstanceUID {sop_uid} is already indexed under another series")
    series_uid = validate_uid(ds_header.get("SeriesInstanceUID"), "SeriesInstanceUID")
    updated = conn.execute(_TOUCH_SERIES, {"pk": series_pk, "uid": series_uid, "now": now})
    if updated.rowcount != 1:
        raise _StaleSeriesCache()
    if existing is None:
        inserted = conn.execute(_INSERT_INSTANCE, {"series_pk": series_pk, "sop_instance_uid": sop_uid, **values})
        pk = cast("Row[Any]", inserted.inserted_primary_key)[0]  # set for a single-row INSERT
        return int(pk), False, bool(values["is_image"])
    conn.execute(_UPDATE_INSTANCE, {"ipk": existing.id, **values})
    return int(existing.id), True, bool(values["is_image"])


# Built once: compiling a statement per instance costs more CPU than executing it.
_SELECT_INSTANCE = select(Instance.id, Instance.series_pk).where(Instance.sop_instance_uid == bindparam("sop"))
_TOUCH_SERIES = (
    # The UID check catches a cached key whose row was deleted and its id reused.
    update(Series).where(Series.id == bindparam("pk"), Series.series_uid == bindparam("uid"))
    .values(state=SeriesState.receiving, stable_at=None, last_received_at=bindparam("now"), recycled_at=None)
)
_INSERT_INSTANCE = insert(Instance)
_UPDATE_INSTANCE = update(Instance).where(Instance.id == bindparam("ipk"))


class _StaleSeriesCache(Exception):
    """The cached series row is gone (e.g. deleted by an admin); take the full path."""


def index_instance(
    session: Session,
    ds_header: Dataset,
    rel_path: str | PurePosixPath,
    file_size: int,
    transfer_syntax: str,
    sender_ae: str,
    derived_from_job: int | None = None,
    is_image: bool | None = None,
) -> Instance:
    """Upsert Patient/Study/Series/Instance rows for one stored file (flushes, does not commit).

    Raises DuplicateConflict if the SOP Instance UID is already indexed in another series.
    """
    study_uid = validate_uid(ds_header.get("StudyInstanceUID"), "StudyInstanceUID")
    series_uid = validate_uid(ds_header.get("SeriesInstanceUID"), "SeriesInstanceUID")
    sop_uid = validate_uid(ds_header.get("SOPInstanceUID"), "SOPInstanceUID")
    now = utcnow()
    sender = (sender_ae or "").strip()[:16]

    study = session.scalar(select(Study).where(Study.study_uid == study_uid))
    if study is None:
        pid, issuer = _text(ds_header, "PatientID", 64), _text(ds_header, "IssuerOfPatientID", 64)
        patient = session.scalar(select(Patient).where(Patient.patient_id == pid, Patient.issuer == issuer))
        if patient is None:
            patient = Patient(
                patient_id=pid,
                issuer=issuer,
                patient_name=_text(ds_header, "PatientName", 324),
                birth_date=_text(ds_header, "PatientBirthDate", 8),
                sex=_text(ds_header, "PatientSex", 16),
            )
            session.add(patient)
        study = Study(
            study_uid=study_uid,
            patient=patient,
            study_date=_text(ds_header, "StudyDate", 8),
            study_time=_text(ds_header, "StudyTime", 16),
            accession_number=_text(ds_header, "AccessionNumber", 16),
            study_id=_text(ds_header, "StudyID", 16),
            study_description=_text(ds_header, "StudyDescription", 64),
            referring_physician=_text(ds_header, "ReferringPhysicianName", 324),
        )
        session.add(study)

    series = session.scalar(select(Series).where(Series.series_uid == series_uid))
    if series is None:
        series = Series(
            series_uid=series_uid,
            study=study,
            modality=_text(ds_header, "Modality", 16),
            series_number=_int(ds_header, "SeriesNumber"),
            series_description=_text(ds_header, "SeriesDescription", 64),
            body_part=_text(ds_header, "BodyPartExamined", 64),
            calling_ae=sender,
            first_received_at=now,
            derived_from_job=derived_from_job,
        )
        session.add(series)
    elif series.study.study_uid != study_uid:
        raise DuplicateConflict(f"SeriesInstanceUID {series_uid} is already indexed under another study")
    if derived_from_job is not None:
        series.derived_from_job = derived_from_job
    # Any arrival restarts the stability timer (documented policy: routing is idempotent).
    series.state = SeriesState.receiving
    series.stable_at = None
    series.last_received_at = now
    series.recycled_at = None  # a recycled series sent again is a live series again, not history

    instance = session.scalar(select(Instance).where(Instance.sop_instance_uid == sop_uid))
    if instance is None:
        instance = Instance(sop_instance_uid=sop_uid, series=series)
        session.add(instance)
    elif instance.series_pk != series.id:
        raise DuplicateConflict(f"SOPInstanceUID {sop_uid} is already indexed under another series")
    values = instance_values(ds_header, rel_path, file_size, transfer_syntax, sender, now, is_image)
    for column, value in values.items():
        setattr(instance, column, value)
    session.flush()
    return instance


def _commit_with_retry(factory: sessionmaker[Session], work: Any, attempts: int = 5) -> Any:
    # Parallel associations may race to create the same patient/study/series row, and SQLite may
    # answer "database is locked"; both resolve by simply doing the transaction again.
    for attempt in range(attempts):
        session = factory()
        try:
            result = work(session)
            session.commit()
            return result
        except (IntegrityError, OperationalError):
            session.rollback()
            if attempt == attempts - 1:
                raise
            time.sleep(0.02 * (attempt + 1))
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()
    raise RuntimeError("unreachable")
