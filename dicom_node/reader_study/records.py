"""Shared reads and writes of the reader-study tables (used by service, reading and results)."""
from __future__ import annotations

import json
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from config.schema import SRNodeConfig
from dicom_node.index.audit import token_fingerprint
from dicom_node.index.models import (
    Audit,
    ReaderStudy,
    ReaderStudyAnswer,
    ReaderStudyCandidate,
    ReaderStudyCase,
)
from dicom_node.reader_study.definition import StudyDefinition

TRUTH = "truth"


class StudyError(ValueError):
    """A request the study cannot honour; `key` names the offending field, `status` the HTTP status."""

    def __init__(self, key: str, message: str, status: int = 422) -> None:
        super().__init__(f"{key}: {message}")
        self.key, self.status = key, status


def reader_accounts(cfg: SRNodeConfig) -> list[str]:
    """Fingerprints of the tokens with role `reader` (how a study names its readers)."""
    return [token_fingerprint(t) for t, e in cfg.admin.token_entries().items() if e.role == "reader"]


def audit(session: Session, actor: str, action: str, detail: dict[str, Any]) -> None:
    """Add an Audit row (no patient data: ids and counts only)."""
    session.add(Audit(actor=actor, action=action, detail=json.dumps(detail, sort_keys=True)))


def definition_of(study: ReaderStudy) -> StudyDefinition:
    """The validated definition stored with a study."""
    return StudyDefinition.model_validate_json(study.definition_json)


def get_study(session: Session, study_id: int) -> ReaderStudy:
    """The study row, or StudyError 404."""
    study = session.get(ReaderStudy, study_id)
    if study is None:
        raise StudyError("study", f"no reader study {study_id}", 404)
    return study


def candidates_by_case(session: Session, study_id: int) -> dict[int, dict[str, ReaderStudyCandidate]]:
    """Candidates of a study: case id → model → row."""
    rows = session.execute(
        select(ReaderStudyCandidate).join(ReaderStudyCase).where(ReaderStudyCase.study_id == study_id)
    ).scalars().all()
    out: dict[int, dict[str, ReaderStudyCandidate]] = {}
    for c in rows:
        out.setdefault(c.case_id, {})[c.model] = c
    return out


def latest_answers(session: Session, study_id: int,
                   reader: str | None = None) -> dict[tuple[int, str], ReaderStudyAnswer]:
    """The newest answer per (case id, reader): the one that counts."""
    query = select(ReaderStudyAnswer).where(ReaderStudyAnswer.study_id == study_id).order_by(ReaderStudyAnswer.id)
    if reader is not None:
        query = query.where(ReaderStudyAnswer.reader == reader)
    return {(a.case_id, a.reader): a for a in session.execute(query).scalars()}
