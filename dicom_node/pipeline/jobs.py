"""Stable series → job rows: apply the first matching routing rule, create or find the job.

Idempotent: routing a series twice finds the same job and adds no outbox row twice.
"""
from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from config.schema import RoutingRule, SRNodeConfig
from dicom_node.clock import utcnow
from dicom_node.derive.uids import derived_series_uid
from dicom_node.index.db import session_scope
from dicom_node.index.models import FINISHED_STATES, Instance, Job, JobState, Series, SeriesState
from dicom_node.outbox.queue import enqueue
from dicom_node.routing import SeriesFacts, rule_name, select_rule, source_of
from sr_engine import registry
from sr_engine.archs import CheckpointError, file_sha256
from sr_engine.interpolate import INTERPOLATORS

log = logging.getLogger(__name__)


def series_facts(session: Session, series: Series) -> SeriesFacts:
    """What routing may match on, from the index (size from the series' first image)."""
    first = session.scalar(
        select(Instance).where(Instance.series_pk == series.id, Instance.is_image.is_(True))
        .order_by(Instance.id).limit(1)
    )
    return SeriesFacts(
        modality=series.modality, calling_ae=series.calling_ae, body_part=series.body_part,
        series_description=series.series_description,
        rows=first.rows if first else None, columns=first.columns if first else None,
        source=source_of(series.calling_ae),
    )


@lru_cache(maxsize=64)
def _file_digest(path: str, mtime_ns: int, size: int) -> str:
    return file_sha256(Path(path))


def checkpoint_digest(cfg: SRNodeConfig, model: str) -> tuple[str, int]:
    """(checkpoint sha256, scale) identifying `model`: its job identity and derived UIDs."""
    spec = registry.resolve(model, cfg.models)
    if spec.arch in INTERPOLATORS:
        return registry.builtin_digest(spec.arch), spec.scale
    if spec.sha256:
        return spec.sha256.lower(), spec.scale
    if spec.weights is None:
        raise CheckpointError(f"model {model!r} has no weights configured (models.{model}.weights)")
    st = Path(spec.weights).stat()
    return _file_digest(str(spec.weights), st.st_mtime_ns, st.st_size), spec.scale


def ensure_job(cfg: SRNodeConfig, factory: sessionmaker[Session], series_pk: int, rule_index: int) -> int:
    """The job of (series, rule), created queued if missing; returns its id (dispatch is automatic).

    Also what query/retrieve calls for an `on_demand` rule. A finished job of a series that has
    gained slices since is queued again (it resumes: slices already derived are skipped).
    """
    rule = cfg.routing[rule_index]
    if rule.skip or not rule.model:
        raise ValueError(f"routing rule {rule_name(rule_index, rule)!r} makes no job")
    name = rule_name(rule_index, rule)
    error = ""
    try:
        sha, model_scale = checkpoint_digest(cfg, rule.model)
    except (registry.UnknownModelError, CheckpointError, OSError) as exc:
        sha, model_scale, error = "", rule.scale or 1, f"cannot resolve model {rule.model!r}: {exc}"
    scale = rule.scale or model_scale
    if not error and scale != model_scale:
        error = f"rule {name!r} asks for x{scale} but model {rule.model!r} is x{model_scale}"
    with session_scope(factory) as session:
        series = session.get(Series, series_pk)
        if series is None:
            raise ValueError(f"series #{series_pk} does not exist")
        n_images = len(list(session.scalars(
            select(Instance.id).where(Instance.series_pk == series_pk, Instance.is_image.is_(True)))))
        job = session.scalar(select(Job).where(
            Job.series_pk == series_pk, Job.rule_name == name, Job.model == rule.model,
            Job.checkpoint_sha256 == sha, Job.scale == scale))
        if job is None:
            job = Job(series_pk=series_pk, rule_name=name, model=rule.model, checkpoint_sha256=sha, scale=scale,
                      priority=rule.priority, destinations=",".join(rule.destinations),
                      derived_series_uid=derived_series_uid(series.series_uid, rule.model, sha, scale) if sha else "",
                      progress_total=n_images, state=JobState.failed if error else JobState.queued, error=error,
                      finished_at=utcnow() if error else None, timings=json.dumps(_arrival_timings(series)))
            session.add(job)
            try:
                session.flush()
            except IntegrityError:  # created meanwhile by another caller
                session.rollback()
                return ensure_job(cfg, factory, series_pk, rule_index)
            if error:
                log.error("job #%d for series #%d failed at routing: %s", job.id, series_pk, error)
            else:
                log.info("job #%d queued: series #%d, rule %s, model %s x%d, %d slice(s), %s",
                         job.id, series_pk, name, rule.model, scale, n_images, rule.priority)
        elif job.state in (*FINISHED_STATES, JobState.failed) and not error and n_images > job.progress_total:
            job.state, job.task_id, job.error, job.progress_total = JobState.queued, "", "", n_images
            job.attempts = 0  # new slices: a fresh worker.max_retries budget
            log.info("job #%d queued again: series #%d now has %d slice(s)", job.id, series_pk, n_images)
        return job.id


def _arrival_timings(series: Series) -> dict[str, float]:
    # The first two stages of the job's timeline, from the series row (seconds).
    def seconds(a: datetime | None, b: datetime | None) -> float:
        if a is None or b is None:
            return 0.0
        aware = [t if t.tzinfo else t.replace(tzinfo=UTC) for t in (a, b)]
        return round((aware[1] - aware[0]).total_seconds(), 4)

    return {"receive": seconds(series.first_received_at, series.last_received_at),
            "stability": seconds(series.last_received_at, series.stable_at)}


def route_series(cfg: SRNodeConfig, factory: sessionmaker[Session], series_pk: int) -> list[int]:
    """Apply the first matching routing rule to a stable series; returns the job ids it has.

    Idempotent: routing a series twice finds the same job and adds no outbox row twice.
    """
    with factory() as session:
        series = session.get(Series, series_pk)
        if series is None or series.derived_from_job is not None:
            return []
        facts = series_facts(session, series)
    chosen = select_rule(cfg.routing, facts)
    job_ids: list[int] = []
    if chosen is None:
        log.info("series #%d (%s): no routing rule matches; kept, not processed", series_pk, facts.modality)
    else:
        index, rule = chosen
        if rule.skip:
            log.info("series #%d: rule %s says skip", series_pk, rule_name(index, rule))
        else:
            if rule.passthrough and rule.destinations:
                _passthrough(factory, series_pk, rule)
            if not rule.on_demand:
                job_ids.append(ensure_job(cfg, factory, series_pk, index))
    with session_scope(factory) as session:
        series = session.get(Series, series_pk)
        if series is not None and series.state == SeriesState.stable:
            series.state = SeriesState.routed
    return job_ids


def _passthrough(factory: sessionmaker[Session], series_pk: int, rule: RoutingRule) -> None:
    # The original goes to the destinations as received, whatever happens to the SR job.
    with session_scope(factory) as session:
        pks = list(session.scalars(select(Instance.id).where(Instance.series_pk == series_pk)))
        added = enqueue(session, pks, rule.destinations)
    if added:
        log.info("series #%d: %d original instance(s) queued for %s", series_pk, len(pks), ",".join(rule.destinations))
