"""Reader-study operations on the index: create, compute candidates, present cases to a reader,
record answers, close, and gather results. The router maps these to HTTP; nothing here knows HTTP.

Blinding: what `reader_case` returns holds opaque ids and labels only (no model, no UID, no
patient data) until the study is closed.
"""
from __future__ import annotations

import json
import logging
import secrets
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker
from tqdm import tqdm

from config.schema import SRNodeConfig
from dicom_node.admin.auth import token_fingerprint
from dicom_node.index.models import (
    Audit,
    Instance,
    ReaderStudy,
    ReaderStudyAnswer,
    ReaderStudyCandidate,
    ReaderStudyCase,
    ReaderStudyPresentation,
    Series,
)
from dicom_node.reader_study import stats
from dicom_node.reader_study.candidates import case_input, centre_crop, run_models, save_array
from dicom_node.reader_study.definition import FACTOR, SCALES, WINDOWS, StudyDefinition
from dicom_node.reader_study.randomise import labels, opaque_id, reader_plan
from dicom_node.reader_study.sampling import SliceSelectionError, select_slices
from dicom_node.storage import resolve_in

log = logging.getLogger("srnode.reader_study")

TRUTH = "truth"


class StudyError(ValueError):
    """A request the study cannot honour; `key` names the offending field, `status` the HTTP status."""

    def __init__(self, key: str, message: str, status: int = 422) -> None:
        super().__init__(f"{key}: {message}")
        self.key, self.status = key, status


def reader_accounts(cfg: SRNodeConfig) -> list[str]:
    """Fingerprints of the tokens with role `reader` (how a study names its readers)."""
    return [token_fingerprint(t) for t, role in cfg.admin.tokens.items() if role == "reader"]


def _audit(session: Session, actor: str, action: str, detail: dict[str, Any]) -> None:
    session.add(Audit(actor=actor, action=action, detail=json.dumps(detail, sort_keys=True)))


def _definition(study: ReaderStudy) -> StudyDefinition:
    return StudyDefinition.model_validate_json(study.definition_json)


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
        _audit(session, actor, "reader_study.create",
               {"study": study.id, "cases": k, "models": definition.models, "readers": definition.readers})
        study_id = study.id
    log.info("reader study %d created by %s: %d cases", study_id, actor, k)
    return study_id


def _load_models(cfg: SRNodeConfig, names: list[str]) -> dict[str, Any]:
    from sr_engine.registry import load, resolve
    from workers.device import pick_device

    device = pick_device(cfg.worker.device)
    out = {}
    for n in names:
        try:
            out[n] = load(resolve(n, cfg.models), device, tile=cfg.worker.tile_size, overlap=cfg.worker.tile_overlap,
                          batch=cfg.worker.batch_size)
        except Exception as exc:  # noqa: BLE001 - which model failed is what the admin needs to know
            raise StudyError("models", f"model {n!r} cannot be loaded: {exc}") from exc
    return out


def mark_computing(sessions: sessionmaker[Session], study_id: int) -> None:
    """Set a draft/failed study to computing (before its thread starts, so pollers never see the old state)."""
    with sessions() as session, session.begin():
        study = _study(session, study_id)
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
        definition = _definition(study)
        study.state, study.error = "computing", ""
        cases = session.execute(
            select(ReaderStudyCase.id, ReaderStudyCase.k, ReaderStudyCase.scale_key, Instance.file_path, Series.modality)
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
                case.crop_json = json.dumps(crop)
                if truth is not None:
                    case.truth_path = save_array(storage, f"{base}/truth.npy", truth)
                for i, res in enumerate(results):
                    session.add(ReaderStudyCandidate(
                        case_id=case_id, model=res.model, checkpoint_sha256=res.checkpoint_sha256,
                        array_path=save_array(storage, f"{base}/m{i:02d}.npy", res.values),
                        psnr_db=res.psnr_db, ssim=res.ssim))
                session.get(ReaderStudy, study_id).progress_done = n
        _write_presentations(sessions, study_id, definition)
    except Exception as exc:  # noqa: BLE001 - any failure is the study's state, shown in the console
        with sessions() as session, session.begin():
            study = session.get(ReaderStudy, study_id)
            study.state, study.error = "failed", str(exc) if isinstance(exc, StudyError) else f"{type(exc).__name__}: {exc}"
        log.error("reader study %d: computing candidates failed: %s: %s", study_id, type(exc).__name__, exc)
        return
    log.info("reader study %d open: %d cases x %d models", study_id, len(cases), len(definition.models))


def _write_presentations(sessions: sessionmaker[Session], study_id: int, definition: StudyDefinition) -> None:
    with sessions() as session, session.begin():
        study = session.get(ReaderStudy, study_id)
        cases = session.execute(
            select(ReaderStudyCase).where(ReaderStudyCase.study_id == study_id).order_by(ReaderStudyCase.k)
        ).scalars().all()
        cand = _candidates_by_case(session, study_id)
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


def _candidates_by_case(session: Session, study_id: int) -> dict[int, dict[str, ReaderStudyCandidate]]:
    rows = session.execute(
        select(ReaderStudyCandidate).join(ReaderStudyCase).where(ReaderStudyCase.study_id == study_id)
    ).scalars().all()
    out: dict[int, dict[str, ReaderStudyCandidate]] = {}
    for c in rows:
        out.setdefault(c.case_id, {})[c.model] = c
    return out


def close_study(sessions: sessionmaker[Session], study_id: int, actor: str) -> None:
    """Close a study: no more answers; readers may now see which model was which."""
    with sessions() as session, session.begin():
        study = _study(session, study_id)
        if study.state != "open":
            raise StudyError("state", f"study {study_id} is {study.state}, only an open study can be closed", 409)
        study.state, study.closed_at = "closed", datetime.now(timezone.utc)
        _audit(session, actor, "reader_study.close", {"study": study_id})


def _study(session: Session, study_id: int) -> ReaderStudy:
    study = session.get(ReaderStudy, study_id)
    if study is None:
        raise StudyError("study", f"no reader study {study_id}", 404)
    return study


# --- what readers see -------------------------------------------------------------------------


def _reader_study(session: Session, study_id: int, reader: str) -> tuple[ReaderStudy, StudyDefinition]:
    study = session.get(ReaderStudy, study_id)
    # A study the reader is not part of answers exactly like one that does not exist.
    if study is None or reader not in (definition := _definition(study)).readers:
        raise StudyError("study", f"no reader study {study_id} for this reader", 404)
    if study.state not in ("open", "closed"):
        raise StudyError("study", f"study {study_id} is not open yet ({study.state})", 409)
    return study, definition


def _latest_answers(session: Session, study_id: int, reader: str | None = None) -> dict[tuple[int, str], ReaderStudyAnswer]:
    query = select(ReaderStudyAnswer).where(ReaderStudyAnswer.study_id == study_id).order_by(ReaderStudyAnswer.id)
    if reader is not None:
        query = query.where(ReaderStudyAnswer.reader == reader)
    return {(a.case_id, a.reader): a for a in session.execute(query).scalars()}


def reader_studies(sessions: sessionmaker[Session], reader: str) -> list[dict[str, Any]]:
    """The open and closed studies this reader takes part in, with their progress."""
    out = []
    with sessions() as session:
        for study in session.execute(
            select(ReaderStudy).where(ReaderStudy.state.in_(("open", "closed"))).order_by(ReaderStudy.id)
        ).scalars():
            definition = _definition(study)
            if reader not in definition.readers:
                continue
            seq = session.execute(select(ReaderStudyPresentation.position, ReaderStudyPresentation.case_id).where(
                ReaderStudyPresentation.study_id == study.id, ReaderStudyPresentation.reader == reader)
                .order_by(ReaderStudyPresentation.position)).all()
            answered = {case_id for case_id, _r in _latest_answers(session, study.id, reader)}
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
        by_id = {c.id: c for c in _candidates_by_case(session, study_id)[case.id].values()}
        order = json.loads(pres.order_json)
        ids = [opaque_id(study.secret, reader, f"c{i}") for i in order]
        total = session.scalar(select(func.count()).select_from(ReaderStudyPresentation).where(
            ReaderStudyPresentation.study_id == study_id, ReaderStudyPresentation.reader == reader))
        answers = _latest_answers(session, study_id, reader)
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
            "ranking": [opaque_id(study.secret, reader, f"c{i}") for i in json.loads(mine.ranking_json)] if mine else None,
        }


def reader_image(sessions: sessionmaker[Session], storage_dir: Path, study_id: int, reader: str,
                 oid: str) -> np.ndarray:
    """The float array behind an opaque id, if it belongs to one of this reader's cases."""
    with sessions() as session:
        study, definition = _reader_study(session, study_id, reader)
        cases = {c.id: c for c in session.execute(
            select(ReaderStudyCase).where(ReaderStudyCase.study_id == study_id)).scalars()}
        for case_id, cands in _candidates_by_case(session, study_id).items():
            found = _opaque_map(study, reader, cases[case_id], cands).get(oid)
            if found is not None and (found[1] != TRUTH or definition.show_ground_truth):
                return np.load(resolve_in(storage_dir, found[0]))
    raise StudyError("image", "no such image for this reader", 404)


def submit_answer(sessions: sessionmaker[Session], study_id: int, reader: str, position: int,
                  ranking: list[str], seconds_on_case: float | None = None) -> dict[str, Any]:
    """Record the reader's ranking (opaque ids, best first) of case `position`; every submission is kept."""
    with sessions() as session, session.begin():
        study, _definition_ = _reader_study(session, study_id, reader)
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
        _audit(session, f"reader:{reader}", "reader_study.answer", {"study": study_id, "position": position})
    return {"ok": True, "position": position}


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


# --- what admins see --------------------------------------------------------------------------


def study_summary(sessions: sessionmaker[Session], study_id: int | None = None) -> list[dict[str, Any]]:
    """Studies with state, progress and answers per reader (admin view)."""
    out = []
    with sessions() as session:
        query = select(ReaderStudy).order_by(ReaderStudy.id.desc())
        if study_id is not None:
            query = query.where(ReaderStudy.id == study_id)
        for study in session.execute(query).scalars():
            definition = _definition(study)
            answers = _latest_answers(session, study.id)
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


@dataclass
class AnswerRow:
    """One submission, for the audit export."""

    answer_id: int
    reader: str
    case_k: int
    scale: str
    answered_at: str
    seconds_on_case: float | None
    display_order: list[str]
    ranking: list[str]
    latest: bool


def answer_rows(sessions: sessionmaker[Session], study_id: int) -> list[AnswerRow]:
    """Every stored submission with models resolved (admin audit, CSV export)."""
    with sessions() as session:
        _study(session, study_id)
        cases = {c.id: c for c in session.execute(
            select(ReaderStudyCase).where(ReaderStudyCase.study_id == study_id)).scalars()}
        model_of = {c.id: c.model for cands in _candidates_by_case(session, study_id).values() for c in cands.values()}
        latest = {a.id for a in _latest_answers(session, study_id).values()}
        rows = session.execute(select(ReaderStudyAnswer).where(ReaderStudyAnswer.study_id == study_id)
                               .order_by(ReaderStudyAnswer.id)).scalars().all()
        return [AnswerRow(a.id, a.reader, cases[a.case_id].k, cases[a.case_id].scale_key, a.answered_at.isoformat(),
                          a.seconds_on_case, [model_of[i] for i in json.loads(a.display_order_json)],
                          [model_of[i] for i in json.loads(a.ranking_json)], a.id in latest) for a in rows]


def results(sessions: sessionmaker[Session], study_id: int, n_boot: int = 2000) -> dict[str, Any]:
    """Mean rank (or pairwise win rate) per model and scale with 95% bootstrap CIs, Kendall's W, the
    Table 5 style table, mean PSNR/SSIM where a ground truth exists."""
    with sessions() as session:
        study = _study(session, study_id)
        definition = _definition(study)
        cases = session.execute(select(ReaderStudyCase).where(ReaderStudyCase.study_id == study_id)
                                .order_by(ReaderStudyCase.k)).scalars().all()
        cands = _candidates_by_case(session, study_id)
        model_of = {c.id: c.model for cc in cands.values() for c in cc.values()}
        latest = _latest_answers(session, study_id)
        state, name = study.state, study.name
    models = definition.models
    per_scale: dict[str, Any] = {}
    for scale_key in definition.scales:
        scase = [c for c in cases if c.scale_key == scale_key]
        index = {c.id: i for i, c in enumerate(scase)}
        answers = [(reader, index[case_id], {model_of[cid]: rank + 1 for rank, cid in enumerate(json.loads(a.ranking_json))})
                   for (case_id, reader), a in latest.items() if case_id in index]
        r = stats.rank_array(answers, definition.readers, len(scase), models)
        if definition.task == "rank":
            value, ci = stats.mean_ranks(r), stats.bootstrap_ci(r, n_boot=n_boot, seed=study_id)
            place = stats.positions(value, lower_is_better=True)
        else:
            value, ci = stats.win_rates(r), stats.bootstrap_win_ci(r, n_boot=n_boot, seed=study_id)
            place = stats.positions(value, lower_is_better=False)
        psnr = {m: [cands[c.id][m].psnr_db for c in scase if c.id in cands and cands[c.id][m].psnr_db is not None]
                for m in models}
        ssim = {m: [cands[c.id][m].ssim for c in scase if c.id in cands and cands[c.id][m].ssim is not None]
                for m in models}
        per_scale[scale_key] = {
            "cases": len(scase), "answers": len(answers),
            "agreement": stats.agreement(r) if definition.task == "rank" else None,
            "models": {m: {"value": _num(value[i]), "ci": [_num(ci[i, 0]), _num(ci[i, 1])], "place": place[i],
                           "n": int((~np.isnan(r[:, :, i])).sum()),
                           "psnr_db": _num(np.mean(psnr[m])) if psnr[m] else None,
                           "ssim": _num(np.mean(ssim[m])) if ssim[m] else None}
                       for i, m in enumerate(models)},
        }
    # Table 5: one row per model, one column group per scale, ordered by the first scale's place.
    first = per_scale[definition.scales[0]]["models"]
    order = sorted(models, key=lambda m: (first[m]["place"] is None, first[m]["place"] or 0, m))
    return {"study": study_id, "name": name, "state": state, "task": definition.task,
            "metric": "mean rank (1 = best)" if definition.task == "rank" else "win rate",
            "readers": len(definition.readers), "scales": definition.scales, "per_scale": per_scale,
            "table": [{"model": m, **{s: per_scale[s]["models"][m] for s in definition.scales}} for m in order],
            "windows": WINDOWS}


def _num(x: float) -> float | None:
    return None if x is None or not np.isfinite(x) else round(float(x), 4)
