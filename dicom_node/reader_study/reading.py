"""What readers see and do: their studies, one case at a time (opaque ids labelled A, B, C...),
the images behind those ids, their answers.

Blinding: nothing returned here names a model, a UID or a patient while the study is open.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.index.models import (
    ReaderStudy,
    ReaderStudyAnswer,
    ReaderStudyCandidate,
    ReaderStudyCase,
    ReaderStudyPresentation,
)
from dicom_node.reader_study.definition import FACTOR, SCALES, StudyDefinition
from dicom_node.reader_study.randomise import labels, opaque_id
from dicom_node.reader_study.records import (
    TRUTH,
    StudyError,
    audit,
    candidates_by_case,
    definition_of,
    latest_answers,
)
from dicom_node.storage import resolve_in


def _reader_study(session: Session, study_id: int, reader: str) -> tuple[ReaderStudy, StudyDefinition]:
    study = session.get(ReaderStudy, study_id)
    # A study the reader is not part of answers exactly like one that does not exist.
    if study is None or reader not in (definition := definition_of(study)).readers:
        raise StudyError("study", f"no reader study {study_id} for this reader", 404)
    if study.state not in ("open", "closed"):
        raise StudyError("study", f"study {study_id} is not open yet ({study.state})", 409)
    return study, definition


def reader_studies(sessions: sessionmaker[Session], reader: str) -> list[dict[str, Any]]:
    """The open and closed studies this reader takes part in, with their progress."""
    out = []
    with sessions() as session:
        for study in session.execute(
            select(ReaderStudy).where(ReaderStudy.state.in_(("open", "closed"))).order_by(ReaderStudy.id)
        ).scalars():
            definition = definition_of(study)
            if reader not in definition.readers:
                continue
            seq = session.execute(select(ReaderStudyPresentation.position, ReaderStudyPresentation.case_id).where(
                ReaderStudyPresentation.study_id == study.id, ReaderStudyPresentation.reader == reader)
                .order_by(ReaderStudyPresentation.position)).all()
            answered = {case_id for case_id, _r in latest_answers(session, study.id, reader)}
            # Where a resumed session continues: the first case of the sequence not answered yet.
            pending = [pos + 1 for pos, case_id in seq if case_id not in answered]
            out.append({"id": study.id, "name": study.name, "state": study.state, "task": definition.task,
                        "total": len(seq), "answered": len(answered), "next": pending[0] if pending else None})
    return out


def _opaque_map(study: ReaderStudy, reader: str, case: ReaderStudyCase,
                candidates: dict[str, ReaderStudyCandidate]) -> dict[str, tuple[str, str]]:
    """opaque id → (relative array path, model or TRUTH) for one case as this reader sees it."""
    out = {opaque_id(study.secret, reader, f"c{c.id}"): (c.array_path, c.model) for c in candidates.values()}
    if case.truth_path:
        out[opaque_id(study.secret, reader, f"t{case.id}")] = (case.truth_path, TRUTH)
    return out


def reader_case(sessions: sessionmaker[Session], study_id: int, reader: str, position: int) -> dict[str, Any]:
    """Case `position` (1-based) of the reader's sequence: opaque ids labelled A, B..., the reader's
    own previous answer, the reference when the study shows ground truth. No model names while open."""
    with sessions() as session:
        study, definition = _reader_study(session, study_id, reader)
        pres = session.execute(select(ReaderStudyPresentation).where(
            ReaderStudyPresentation.study_id == study_id, ReaderStudyPresentation.reader == reader,
            ReaderStudyPresentation.position == position - 1)).scalar_one_or_none()
        if pres is None:
            raise StudyError("position", f"no case {position} in this study", 404)
        case = session.get(ReaderStudyCase, pres.case_id)
        assert case is not None  # a presentation's case (foreign key)
        by_id = {c.id: c for c in candidates_by_case(session, study_id)[case.id].values()}
        order = json.loads(pres.order_json)
        ids = [opaque_id(study.secret, reader, f"c{i}") for i in order]
        total = session.scalar(select(func.count()).select_from(ReaderStudyPresentation).where(
            ReaderStudyPresentation.study_id == study_id, ReaderStudyPresentation.reader == reader))
        answers = latest_answers(session, study_id, reader)
        mine = answers.get((case.id, reader))
        crop = json.loads(case.crop_json or "[0, 0, 0, 0]")
        closed = study.state == "closed"
        candidates = [{"id": oid, "label": lab, **({"model": by_id[cid].model} if closed else {})}
                      for oid, lab, cid in zip(ids, labels(len(ids)), order)]
        show_truth = definition.show_ground_truth and bool(case.truth_path)
        inp, out = SCALES[case.scale_key][:2]
        return {
            "study": study_id, "name": study.name, "state": study.state, "task": definition.task,
            "position": position, "total": total, "answered": len(answers),
            "scale": f"{inp}→{out}" if definition.crop is None else f"x{FACTOR}",
            "size": [crop[2] * (1 if case.truth_path else FACTOR), crop[3] * (1 if case.truth_path else FACTOR)],
            "window": definition.window,
            "candidates": candidates,
            "reference": opaque_id(study.secret, reader, f"t{case.id}") if show_truth else None,
            "ranking": ([opaque_id(study.secret, reader, f"c{i}") for i in json.loads(mine.ranking_json)]
                        if mine else None),
        }


def reader_image(sessions: sessionmaker[Session], storage_dir: Path, study_id: int, reader: str,
                 oid: str) -> np.ndarray:
    """The float array behind an opaque id, if it belongs to one of this reader's cases."""
    with sessions() as session:
        study, definition = _reader_study(session, study_id, reader)
        cases = {c.id: c for c in session.execute(
            select(ReaderStudyCase).where(ReaderStudyCase.study_id == study_id)).scalars()}
        for case_id, cands in candidates_by_case(session, study_id).items():
            found = _opaque_map(study, reader, cases[case_id], cands).get(oid)
            if found is not None and (found[1] != TRUTH or definition.show_ground_truth):
                return np.load(resolve_in(storage_dir, found[0]))
    raise StudyError("image", "no such image for this reader", 404)


def submit_answer(sessions: sessionmaker[Session], study_id: int, reader: str, position: int,
                  ranking: list[str], seconds_on_case: float | None = None) -> dict[str, Any]:
    """Record the reader's ranking (opaque ids, best first) of case `position`; every submission is kept."""
    with sessions() as session, session.begin():
        study, _ = _reader_study(session, study_id, reader)
        if study.state != "open":
            raise StudyError("state", f"study {study_id} is closed", 409)
        pres = session.execute(select(ReaderStudyPresentation).where(
            ReaderStudyPresentation.study_id == study_id, ReaderStudyPresentation.reader == reader,
            ReaderStudyPresentation.position == position - 1)).scalar_one_or_none()
        if pres is None:
            raise StudyError("position", f"no case {position} in this study", 404)
        order = json.loads(pres.order_json)
        to_internal = {opaque_id(study.secret, reader, f"c{i}"): i for i in order}
        if sorted(ranking) != sorted(to_internal) or len(set(ranking)) != len(ranking):
            raise StudyError("ranking", f"rank each of the {len(order)} candidates shown exactly once")
        internal = [to_internal[o] for o in ranking]
        session.add(ReaderStudyAnswer(study_id=study_id, case_id=pres.case_id, reader=reader,
                                      ranking_json=json.dumps(internal), display_order_json=pres.order_json,
                                      seconds_on_case=seconds_on_case))
        audit(session, f"reader:{reader}", "reader_study.answer", {"study": study_id, "position": position})
    return {"ok": True, "position": position}
