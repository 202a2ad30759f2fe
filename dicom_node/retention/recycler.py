"""Recycling: plan which eligible series go (age rules, then the quota), remove each crash-safely.

Order, so that no index row ever points at a missing file and kill -9 leaves no orphan file:
1. `series.recycling_at` is set and committed (the durable "this folder is being emptied");
2. one transaction deletes its outbox rows, instances and (per retention.keep_job_history) job
   rows, counts the bytes and writes the audit row;
3. the files are unlinked (only those written before step 1: a re-sent instance arriving meanwhile
   has a row again and keeps its file);
4. the series row goes, with its study and patient when they are empty (or, when job history is
   kept, it stays with `recycled_at` as the jobs' parent).
`finish_interrupted` (node start) repeats 2-4 for every series still marked, then sweeps that
series' folder for files no instance row names. Nothing outside such a folder is ever deleted.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import delete, exists, func, select
from sqlalchemy.orm import Session, sessionmaker

from config.schema import RetentionConfig
from dicom_node.clock import utcnow
from dicom_node.index.models import (
    Audit,
    Instance,
    Job,
    Outbox,
    Patient,
    Series,
    Study,
)
from dicom_node.retention import MIB
from dicom_node.retention.eligibility import Candidate, aware, eligible_series
from dicom_node.retention.usage import add_recycled_bytes, usage_by_kind
from dicom_node.storage import TEMP_PREFIX, resolve_in, uid_for_log

log = logging.getLogger("dicom_node.retention")


@dataclass(frozen=True)
class Planned:
    candidate: Candidate
    why: str


def age_limit_h(rc: RetentionConfig, c: Candidate) -> float | None:
    """The max_age_h that applies: the modality's rule if the site set one, else the kind's."""
    rule = rc.modalities.get(c.modality.upper())
    if rule is not None and rule.max_age_h is not None:
        return rule.max_age_h
    return rc.max_age_h.get(c.kind)  # type: ignore[call-overload]


def plan(candidates: list[Candidate], used: int, rc: RetentionConfig, now: datetime) -> list[Planned]:
    """Every candidate past its age rule, then the oldest others until `used` is within the quota."""
    chosen: list[Planned] = []
    rest: list[Candidate] = []
    for c in candidates:
        limit = age_limit_h(rc, c)
        if limit is not None and c.age_h(now) > limit:
            chosen.append(Planned(c, f"age {c.age_h(now):.1f} h > max_age_h {limit:g} ({c.kind} {c.modality})"))
            used -= c.bytes
        else:
            rest.append(c)
    if rc.quota_mb is not None:
        for c in rest:
            if used <= rc.quota_mb * MIB:
                break
            chosen.append(Planned(c, f"quota: {used / MIB:.1f} MiB used > quota_mb {rc.quota_mb:g}"))
            used -= c.bytes
    return chosen


def plan_now(factory: sessionmaker[Session], rc: RetentionConfig) -> list[Planned]:
    """What a pass would recycle now (the dry run shows this)."""
    with factory() as session:
        now = utcnow()
        return plan(eligible_series(session, rc, now), sum(usage_by_kind(session).values()), rc, now)


def run_pass(factory: sessionmaker[Session], storage_dir: Path, rc: RetentionConfig, actor: str = "retention") -> int:
    """Recycle what the rules ask for; bytes freed. Re-plans after each round: a source series
    becomes eligible once its derived series went."""
    freed = 0
    while True:
        planned = plan_now(factory, rc)
        if not planned:
            return freed
        for p in planned:
            freed += recycle_series(factory, storage_dir, p.candidate.pk, p.why, rc.keep_job_history, actor)


def _mark(factory: sessionmaker[Session], series_pk: int) -> datetime | None:
    """Step 1: the committed mark (None when the series is gone or already being recycled)."""
    with factory.begin() as session:
        series = session.get(Series, series_pk)
        if series is None or series.recycling_at is not None:
            return None
        series.recycling_at = mark = utcnow()
        return mark


def recycle_series(factory: sessionmaker[Session], storage_dir: Path, series_pk: int, why: str,
                   keep_job_history: bool, actor: str = "retention") -> int:
    """Remove one series (steps 1-4 of the module doc); bytes freed (0 if someone else has it)."""
    mark = _mark(factory, series_pk)
    if mark is None:
        return 0
    return _finish(factory, storage_dir, series_pk, mark, why, keep_job_history, actor)


def finish_interrupted(factory: sessionmaker[Session], storage_dir: Path, keep_job_history: bool) -> int:
    """On start: finish every series a crash left marked; sweep their folders for orphan files."""
    with factory() as session:
        marked = session.execute(select(Series.id, Series.recycling_at).where(Series.recycling_at.is_not(None))).all()
    freed = 0
    for pk, mark in marked:
        freed += _finish(factory, storage_dir, pk, aware(mark), "finishing an interrupted recycle",  # type: ignore[arg-type]
                         keep_job_history, "retention", sweep=True)
    if marked:
        log.info("finished %d interrupted recycle(s)", len(marked))
    return freed


def _finish(factory: sessionmaker[Session], storage_dir: Path, series_pk: int, mark: datetime, why: str,
            keep_job_history: bool, actor: str, sweep: bool = False) -> int:
    files, folder, freed = _delete_rows(factory, series_pk, why, keep_job_history, actor)
    for rel in files:
        _unlink_if_older(resolve_in(storage_dir, rel), mark)
    if folder is not None:
        if sweep:
            _sweep_orphans(factory, storage_dir, folder, mark)
        _remove_empty_dirs(resolve_in(storage_dir, folder))
    _drop_series(factory, series_pk)
    return freed


def _delete_rows(factory: sessionmaker[Session], series_pk: int, why: str, keep_job_history: bool,
                 actor: str) -> tuple[list[str], str | None, int]:
    """Step 2, one transaction: (file paths, series folder, bytes)."""
    with factory.begin() as session:
        series = session.get(Series, series_pk)
        if series is None:
            return [], None, 0
        folder = f"{series.study.study_uid}/{series.series_uid}"
        rows = session.execute(select(Instance.id, Instance.file_path, Instance.file_size)
                               .where(Instance.series_pk == series_pk)).all()
        ids = [r.id for r in rows]
        for chunk in (ids[i:i + 500] for i in range(0, len(ids), 500)):
            session.execute(delete(Outbox).where(Outbox.instance_pk.in_(chunk)))
            session.execute(delete(Instance).where(Instance.id.in_(chunk)))
        if not keep_job_history:
            jobs = select(Job.id).where(Job.series_pk == series_pk)
            session.execute(delete(Outbox).where(Outbox.job_pk.in_(jobs)))
            session.execute(delete(Job).where(Job.series_pk == series_pk))
        freed = sum(int(r.file_size or 0) for r in rows)
        if rows:
            add_recycled_bytes(session, freed)
            kind = "derived" if series.derived_from_job is not None else "original"
            session.add(Audit(actor=actor, action="series.recycle", detail=json.dumps(
                {"series_uid": series.series_uid, "kind": kind, "modality": series.modality, "why": why,
                 "instances": len(rows), "bytes": freed}, sort_keys=True)))
            log.info("recycled series %s (%s %s, %d instances, %.1f MiB): %s", uid_for_log(series.series_uid), kind,
                     series.modality, len(rows), freed / MIB, why)
    return [r.file_path for r in rows], folder, freed


def _unlink_if_older(path: Path, mark: datetime) -> None:
    """Unlink a recycled file; one written after the mark is a new arrival's and stays."""
    try:
        if path.stat().st_mtime < mark.timestamp():
            path.unlink()
    except FileNotFoundError:
        pass  # an earlier, interrupted attempt got to it


def _sweep_orphans(factory: sessionmaker[Session], storage_dir: Path, folder: str, mark: datetime) -> None:
    """Files of this series' folder that no instance row names, written before the mark (after a
    crash between step 2's commit and the unlinks)."""
    directory = resolve_in(storage_dir, folder)
    if not directory.is_dir():
        return
    with factory() as session:
        known = set(session.scalars(select(Instance.file_path).where(Instance.file_path.like(f"{folder}/%"))))
    for entry in directory.iterdir():
        if entry.is_file() and not entry.name.startswith(TEMP_PREFIX) and f"{folder}/{entry.name}" not in known:
            _unlink_if_older(entry, mark)


def _remove_empty_dirs(series_dir: Path) -> None:
    for directory in (series_dir, series_dir.parent):
        try:
            directory.rmdir()
        except OSError:
            return  # not empty (other series of the study, a new arrival) or already gone


def _drop_series(factory: sessionmaker[Session], series_pk: int) -> None:
    """Step 4: the series row (and its empty study, patient), or a history-only row; or, when an
    instance arrived during the recycle, just the mark."""
    with factory.begin() as session:
        series = session.get(Series, series_pk)
        if series is None:
            return
        series.recycling_at = None
        if session.scalar(select(exists().where(Instance.series_pk == series_pk))):
            return
        if session.scalar(select(exists().where(Job.series_pk == series_pk))):
            series.recycled_at = utcnow()
            return
        study = series.study
        session.delete(series)
        session.flush()
        if not session.scalar(select(func.count()).select_from(Series).where(Series.study_pk == study.id)):
            patient_pk = study.patient_pk
            session.delete(study)
            session.flush()
            if not session.scalar(select(exists().where(Study.patient_pk == patient_pk))):
                session.execute(delete(Patient).where(Patient.id == patient_pk))
