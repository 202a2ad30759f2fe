"""Reader-study lifecycle on the index: create (validate, draw slices), compute candidates once per
case, write each reader's plan, close; the admin's summaries. The router maps these to HTTP."""
from __future__ import annotations

import json
import logging
import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker
from tqdm import tqdm

from config.schema import SRNodeConfig
from dicom_node.index.models import (
    Instance,
    ReaderStudy,
    ReaderStudyCandidate,
    ReaderStudyCase,
    ReaderStudyPresentation,
    Series,
)
from dicom_node.reader_study.candidates import (
    case_input,
    centre_crop,
    run_models,
    save_array,
)
from dicom_node.reader_study.definition import FACTOR, StudyDefinition
from dicom_node.reader_study.randomise import reader_plan
from dicom_node.reader_study.records import (
    StudyError,
    audit,
    candidates_by_case,
    definition_of,
    get_study,
    latest_answers,
    reader_accounts,
)
from dicom_node.reader_study.sampling import SliceSelectionError, select_slices
from dicom_node.storage import resolve_in

log = logging.getLogger("srnode.reader_study")


def create_study(sessions: sessionmaker[Session], cfg: SRNodeConfig, definition: StudyDefinition, actor: str) -> int:
    """Validate models, readers and slices; write the study and its cases (state draft)."""
    from sr_engine.registry import UnknownModelError, resolve

    for name in definition.models:
        try:
            spec = resolve(name, cfg.models)
        except UnknownModelError as exc:
            raise StudyError("models", str(exc)) from None
        if spec.scale != FACTOR:
            raise StudyError("models", f"{name!r} is x{spec.scale}; a study compares x{FACTOR} models")
    known = set(reader_accounts(cfg))
    unknown = [r for r in definition.readers if r not in known]
    if unknown:
        raise StudyError("readers", f"{unknown[0]!r} is not a reader account (admin.tokens with role reader)")
    with sessions() as session, session.begin():
        try:
            slices = select_slices(session, definition)
        except SliceSelectionError as exc:
            raise StudyError(exc.key, str(exc).split(": ", 1)[1]) from None
        study = ReaderStudy(name=definition.name, definition_json=definition.model_dump_json(), state="draft",
                            seed=definition.seed, secret=secrets.token_hex(32), created_by=actor,
                            progress_total=len(slices) * len(definition.scales))
        session.add(study)
        session.flush()
        k = 0
        for scale_key in definition.scales:
            for inst in slices:
                session.add(ReaderStudyCase(study_id=study.id, k=k, scale_key=scale_key, instance_pk=inst.id))
                k += 1
        audit(session, actor, "reader_study.create",
               {"study": study.id, "cases": k, "models": definition.models, "readers": definition.readers})
        study_id = study.id
    log.info("reader study %d created by %s: %d cases", study_id, actor, k)
    return study_id


def _load_models(cfg: SRNodeConfig, names: list[str]) -> dict[str, Any]:
    from sr_engine.device import pick_device
    from sr_engine.registry import load, resolve

    device = pick_device(cfg.worker.device)
    out = {}
    for n in names:
        try:
            out[n] = load(resolve(n, cfg.models), device, tile=cfg.worker.tile_size or None,
                          overlap=cfg.worker.tile_overlap, batch=cfg.worker.batch_size)
        except Exception as exc:
            raise StudyError("models", f"model {n!r} cannot be loaded: {exc}") from exc
    return out


def mark_computing(sessions: sessionmaker[Session], study_id: int) -> None:
    """Set a draft/failed study to computing (before its thread starts, so pollers never see the old state)."""
    with sessions() as session, session.begin():
        study = get_study(session, study_id)
        if study.state in ("open", "closed"):
            raise StudyError("state", f"study {study_id} is already {study.state}", 409)
        study.state, study.error = "computing", ""


def compute_candidates(sessions: sessionmaker[Session], cfg: SRNodeConfig, study_id: int) -> None:
    """Run every model once per case (skipping cases already done), cache the float outputs, then
    write each reader's presentations and open the study. Failures leave state `failed` + error."""
    from pydicom import dcmread

    from sr_engine.intensity import modality_values

    storage = Path(cfg.node.storage_dir)
    with sessions() as session, session.begin():
        study = session.get(ReaderStudy, study_id)
        if study is None:
            raise StudyError("study", f"no reader study {study_id}", 404)
        definition = definition_of(study)
        study.state, study.error = "computing", ""
        cases = session.execute(
            select(ReaderStudyCase.id, ReaderStudyCase.k, ReaderStudyCase.scale_key, Instance.file_path,
                   Series.modality)
            .join(Instance, Instance.id == ReaderStudyCase.instance_pk).join(Series, Series.id == Instance.series_pk)
            .where(ReaderStudyCase.study_id == study_id).order_by(ReaderStudyCase.k)
        ).all()
        done = set(session.execute(
            select(ReaderStudyCandidate.case_id).join(ReaderStudyCase)
            .where(ReaderStudyCase.study_id == study_id)
            .group_by(ReaderStudyCandidate.case_id).having(func.count() == len(definition.models))
        ).scalars())
    try:
        models = _load_models(cfg, definition.models)
        for n, (case_id, k, scale_key, file_path, modality) in enumerate(
            tqdm(cases, desc=f"reader study {study_id}", unit="case"), 1
        ):
            if case_id in done:
                continue
            values = modality_values(dcmread(resolve_in(storage, file_path)))
            region, crop = centre_crop(values.reshape(values.shape[-2:]), definition.crop)
            lr, truth = case_input(region, scale_key)
            results = run_models(lr, truth, modality, models)
            base = f"reader_study/{study_id}/case{k:04d}"
            with sessions() as session, session.begin():
                case = session.get(ReaderStudyCase, case_id)
                assert case is not None  # added above in this run
                case.crop_json = json.dumps(crop)
                if truth is not None:
                    case.truth_path = save_array(storage, f"{base}/truth.npy", truth)
                for i, res in enumerate(results):
                    session.add(ReaderStudyCandidate(
                        case_id=case_id, model=res.model, checkpoint_sha256=res.checkpoint_sha256,
                        array_path=save_array(storage, f"{base}/m{i:02d}.npy", res.values),
                        psnr_db=res.psnr_db, ssim=res.ssim))
                current = session.get(ReaderStudy, study_id)
                assert current is not None  # checked at the start of the run
                current.progress_done = n
        _write_presentations(sessions, study_id, definition)
    except Exception as exc:  # noqa: BLE001 - any failure is the study's state, shown in the console
        with sessions() as session, session.begin():
            study = session.get(ReaderStudy, study_id)
            assert study is not None  # checked at the start of the run
            study.state = "failed"
            study.error = str(exc) if isinstance(exc, StudyError) else f"{type(exc).__name__}: {exc}"
        log.error("reader study %d: computing candidates failed: %s: %s", study_id, type(exc).__name__, exc)
        return
    log.info("reader study %d open: %d cases x %d models", study_id, len(cases), len(definition.models))


def _write_presentations(sessions: sessionmaker[Session], study_id: int, definition: StudyDefinition) -> None:
    with sessions() as session, session.begin():
        study = session.get(ReaderStudy, study_id)
        assert study is not None  # checked at the start of the run
        cases = session.execute(
            select(ReaderStudyCase).where(ReaderStudyCase.study_id == study_id).order_by(ReaderStudyCase.k)
        ).scalars().all()
        cand = candidates_by_case(session, study_id)
        existing = set(session.execute(
            select(ReaderStudyPresentation.reader).where(ReaderStudyPresentation.study_id == study_id)
        ).scalars())
        for reader in definition.readers:
            if reader in existing:
                continue
            for p in reader_plan(len(cases), len(definition.models), definition.task, study.seed, reader):
                case = cases[p.case_index]
                ids = [cand[case.id][definition.models[i]].id for i in p.order]
                session.add(ReaderStudyPresentation(study_id=study_id, case_id=case.id, reader=reader,
                                                    position=p.position, order_json=json.dumps(ids)))
        study.state = "open"


def close_study(sessions: sessionmaker[Session], study_id: int, actor: str) -> None:
    """Close a study: no more answers; readers may now see which model was which."""
    with sessions() as session, session.begin():
        study = get_study(session, study_id)
        if study.state != "open":
            raise StudyError("state", f"study {study_id} is {study.state}, only an open study can be closed", 409)
        study.state, study.closed_at = "closed", datetime.now(UTC)
        audit(session, actor, "reader_study.close", {"study": study_id})


def series_slices(sessions: sessionmaker[Session], series_uid: str) -> list[dict[str, Any]]:
    """Single-frame image slices of a stored series in geometric order (for picking study slices)."""
    with sessions() as session:
        rows = session.execute(
            select(Instance).join(Series).where(Series.series_uid == series_uid, Instance.is_image)
        ).scalars().all()
        rows = [r for r in rows if (r.number_of_frames or 1) <= 1]
        rows.sort(key=lambda i: (i.slice_location if i.slice_location is not None else float("inf"),
                                 i.instance_number or 0, i.sop_instance_uid))
        return [{"sop_instance_uid": r.sop_instance_uid, "instance_number": r.instance_number,
                 "slice_location": r.slice_location, "size": [r.rows, r.columns]} for r in rows]


def study_summary(sessions: sessionmaker[Session], study_id: int | None = None) -> list[dict[str, Any]]:
    """Studies with state, progress and answers per reader (admin view)."""
    out = []
    with sessions() as session:
        query = select(ReaderStudy).order_by(ReaderStudy.id.desc())
        if study_id is not None:
            query = query.where(ReaderStudy.id == study_id)
        for study in session.execute(query).scalars():
            definition = definition_of(study)
            answers = latest_answers(session, study.id)
            n_cases = session.scalar(select(func.count()).select_from(ReaderStudyCase).where(
                ReaderStudyCase.study_id == study.id))
            out.append({
                "id": study.id, "name": study.name, "state": study.state, "error": study.error,
                "progress": [study.progress_done, study.progress_total], "cases": n_cases,
                "created_at": study.created_at.isoformat(), "created_by": study.created_by,
                "closed_at": study.closed_at.isoformat() if study.closed_at else None,
                "definition": json.loads(study.definition_json),
                "answers_per_reader": {r: sum(1 for (_c, rr) in answers if rr == r) for r in definition.readers},
            })
    if study_id is not None and not out:
        raise StudyError("study", f"no reader study {study_id}", 404)
    return out
