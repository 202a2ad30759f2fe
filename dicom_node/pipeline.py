"""The stable-series hand-off: route → job rows → dispatch to workers; plus the node's services.

    stable series ──route_series──▶ Job rows (+ passthrough outbox rows) ──Dispatcher──▶ Celery task(job id)
    worker (embedded child process, or `srnode worker` anywhere) ──▶ derived instances + outbox rows
    OutboxSender ──C-STORE──▶ destinations

Every step is a committed row before the next starts. The Dispatcher is the only place that sends
tasks: it sends queued jobs that have no task yet, and puts back to queued any running job whose
worker stopped beating (killed, host lost), so nothing depends on the broker redelivering.
"""
from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from config.schema import RoutingRule, SRNodeConfig
from dicom_node.derive.uids import derived_series_uid
from dicom_node.derive.writer import Derivation, derived_series_description, derived_series_number
from dicom_node.index.db import session_scope
from dicom_node.index.models import Instance, Job, JobState, Series, SeriesState
from dicom_node.outbox.queue import enqueue
from dicom_node.outbox.sender import OutboxSender
from dicom_node.qr.on_demand import (OnDemandError, ProducedInstance, VirtualSeries, on_demand_provider,
                                   set_on_demand_provider)
from dicom_node.routing import SeriesFacts, rule_name, select_rule
from sr_engine import registry
from sr_engine.archs import CheckpointError, file_sha256
from sr_engine.interpolate import INTERPOLATORS

if TYPE_CHECKING:
    from dicom_node.server import NodeServer

log = logging.getLogger(__name__)

ACTIVE_STATES = (JobState.queued, JobState.running)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


# -- routing -----------------------------------------------------------------------------------
def series_facts(session: Session, series: Series) -> SeriesFacts:
    """What routing may match on, from the index (size from the series' first image)."""
    first = session.scalar(
        select(Instance).where(Instance.series_pk == series.id, Instance.is_image.is_(True)).order_by(Instance.id).limit(1)
    )
    return SeriesFacts(
        modality=series.modality, calling_ae=series.calling_ae, body_part=series.body_part,
        series_description=series.series_description,
        rows=first.rows if first else None, columns=first.columns if first else None,
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
        elif job.state in (JobState.done, JobState.failed) and not error and n_images > job.progress_total:
            job.state, job.task_id, job.error, job.progress_total = JobState.queued, "", "", n_images
            log.info("job #%d queued again: series #%d now has %d slice(s)", job.id, series_pk, n_images)
        return job.id


def _arrival_timings(series: Series) -> dict[str, float]:
    # The first two stages of the job's timeline, from the series row (seconds).
    def seconds(a: datetime | None, b: datetime | None) -> float:
        if a is None or b is None:
            return 0.0
        aware = [t if t.tzinfo else t.replace(tzinfo=timezone.utc) for t in (a, b)]
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


# -- on demand (query/retrieve) ----------------------------------------------------------------
class OnDemandJobs:
    """Query/retrieve's OnDemandProvider: derived series of `on_demand` rules, made when retrieved.

    The derived UIDs are the deterministic ones, so C-FIND can list a series before it exists and
    C-MOVE of it starts the job (or joins the running one) through `ensure_job`.
    """

    def __init__(self, cfg: SRNodeConfig, factory: sessionmaker[Session], storage_dir: Path,
                 wake: "Callable[[], None] | None" = None, timeout_s: float = 3600.0, poll_s: float = 0.2) -> None:
        self.cfg, self.factory, self.storage_dir = cfg, factory, Path(storage_dir)
        self.wake, self.timeout_s, self.poll_s = wake, timeout_s, poll_s

    def _virtual(self, session: Session, series: Series) -> tuple[VirtualSeries, int] | None:
        chosen = select_rule(self.cfg.routing, series_facts(session, series))
        if chosen is None or not chosen[1].on_demand or chosen[1].skip or not chosen[1].model:
            return None
        index, rule = chosen
        try:
            sha, model_scale = checkpoint_digest(self.cfg, rule.model)
        except (registry.UnknownModelError, CheckpointError, OSError):
            return None  # ensure_job would fail it; nothing to offer
        derivation = Derivation.from_config(self.cfg, rule.model, sha, rule.scale or model_scale)
        n = len(list(session.scalars(
            select(Instance.id).where(Instance.series_pk == series.id, Instance.is_image.is_(True)))))
        return VirtualSeries(
            series_uid=derivation.series_uid(series.series_uid), source_series_uid=series.series_uid,
            modality=series.modality, series_description=derived_series_description(series.series_description, derivation),
            series_number=derived_series_number(series.series_number, derivation), expected_instances=n,
            rule_name=rule_name(index, rule),
        ), index

    def virtual_series(self, session: Session, source_series_uids: Sequence[str]) -> list[VirtualSeries]:
        """The derived series on-demand rules would make from these source series."""
        rows = session.scalars(select(Series).where(Series.series_uid.in_(list(source_series_uids)),
                                                    Series.derived_from_job.is_(None)))
        return [v for v, _ in filter(None, (self._virtual(session, s) for s in rows))]

    def _find(self, session: Session, series_uid: str) -> tuple[VirtualSeries, int, int] | None:
        job = session.scalar(select(Job).where(Job.derived_series_uid == series_uid).limit(1))
        candidates = [session.get(Series, job.series_pk)] if job else session.scalars(
            select(Series).where(Series.derived_from_job.is_(None)))
        for series in candidates:
            found = self._virtual(session, series) if series is not None else None
            if found and found[0].series_uid == series_uid:
                return found[0], found[1], series.id
        return None

    def lookup(self, session: Session, series_uid: str) -> VirtualSeries | None:
        """The virtual series with this UID, or None if no on-demand rule makes it."""
        found = self._find(session, series_uid)
        return found[0] if found else None

    def materialise(self, series_uid: str) -> Iterator[ProducedInstance]:
        """Ensure the job, then yield derived instances as the worker stores them."""
        with self.factory() as session:
            found = self._find(session, series_uid)
        if found is None:
            raise OnDemandError(f"series {series_uid} is not made by any on-demand rule")
        _, index, series_pk = found
        job_id = ensure_job(self.cfg, self.factory, series_pk, index)
        if self.wake:
            self.wake()
        sent: set[str] = set()
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            with self.factory() as session:
                job = session.get(Job, job_id)
                assert job is not None
                state, error = job.state, job.error
                rows = session.execute(
                    select(Instance.sop_instance_uid, Instance.file_path).join(Series, Series.id == Instance.series_pk)
                    .where(Series.series_uid == series_uid).order_by(Instance.id)).all()
            for sop, rel in rows:
                if sop not in sent:
                    sent.add(sop)
                    yield ProducedInstance(path=self.storage_dir / rel, sop_instance_uid=sop)
            if state == JobState.done:
                return
            if state in (JobState.failed, JobState.cancelled):
                raise OnDemandError(f"job #{job_id} {state.value}: {error or 'no reason recorded'}")
            time.sleep(self.poll_s)
        raise OnDemandError(f"job #{job_id} did not finish within {self.timeout_s:.0f} s")


# -- dispatch ----------------------------------------------------------------------------------
class Dispatcher:
    """Sends queued jobs to the broker and requeues jobs whose worker stopped beating."""

    def __init__(self, cfg: SRNodeConfig, factory: sessionmaker[Session], poll_s: float = 1.0) -> None:
        from workers.app import make_celery  # the producer side of the same app the workers run

        self.cfg = cfg
        self.factory = factory
        self.poll_s = poll_s
        self.app = make_celery(cfg)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the dispatch loop."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="srnode-dispatch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the loop."""
        self._stop.set()
        self._wake.set()
        if self._thread:
            self._thread.join(timeout=30)

    def wake(self) -> None:
        """Dispatch now instead of at the next poll."""
        self._wake.set()

    def _loop(self) -> None:
        failing = False
        while not self._stop.is_set():
            try:
                self.requeue_stale()
                self.dispatch_pending()
                if failing:
                    log.info("dispatch works again")
                failing = False
            except Exception as exc:  # noqa: BLE001 - broker or database away; the next poll retries
                if not failing:  # one line per outage, not one per poll
                    log.warning("cannot dispatch jobs (%s: %s); retrying every %.0f s", type(exc).__name__, exc, self.poll_s)
                failing = True
            self._wake.wait(self.poll_s)
            self._wake.clear()

    def reset_all_active(self) -> int:
        """Every queued/running job back to queued without a task (its worker died with the node)."""
        with session_scope(self.factory) as session:
            result = session.execute(update(Job).where(Job.state.in_(ACTIVE_STATES))
                                     .values(state=JobState.queued, task_id="", heartbeat_at=None))
            return int(result.rowcount or 0)

    def requeue_stale(self) -> int:
        """Running jobs without a heartbeat for worker.heartbeat_timeout_s go back to queued."""
        stale = utcnow() - timedelta(seconds=self.cfg.worker.heartbeat_timeout_s)
        with session_scope(self.factory) as session:
            jobs = list(session.scalars(select(Job).where(Job.state == JobState.running, Job.heartbeat_at < stale)))
            for job in jobs:
                log.warning("job #%d: no heartbeat from its worker for %.0f s; queued again (at %d of %d slices)",
                            job.id, self.cfg.worker.heartbeat_timeout_s, job.progress_done, job.progress_total)
                job.state, job.task_id, job.heartbeat_at = JobState.queued, "", None
            return len(jobs)

    def dispatch_pending(self) -> int:
        """Send a task for every queued job that has none; returns how many were sent."""
        from workers.app import TASK_PROCESS_JOB, queue_name

        with self.factory() as session:
            jobs = list(session.scalars(
                select(Job).where(Job.state == JobState.queued, Job.task_id == "")
                .order_by(Job.priority != "stat", Job.created_at, Job.id)))
        sent = 0
        for job in jobs:
            task_id = str(uuid.uuid4())
            with self._lock:
                self.app.send_task(TASK_PROCESS_JOB, args=[job.id], task_id=task_id,
                                   queue=queue_name(job.model, job.priority))
            # Sent first, recorded second: a crash in between only sends the job twice (harmless).
            with session_scope(self.factory) as session:
                session.execute(update(Job).where(Job.id == job.id, Job.task_id == "").values(task_id=task_id))
            sent += 1
        return sent


# -- embedded worker ---------------------------------------------------------------------------
def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    # Linux: the worker gets SIGTERM when the node process dies, so it never outlives it.
    try:
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class EmbeddedWorker:
    """`srnode worker` as a child process of the node, with the node's configuration."""

    def __init__(self, cfg: SRNodeConfig, on_restart: "callable[[], None] | None" = None) -> None:  # type: ignore[valid-type]
        self.cfg = cfg
        self.on_restart = on_restart
        self.proc: subprocess.Popen[bytes] | None = None
        self.config_file = Path(cfg.node.storage_dir).resolve().parent / "srnode-embedded-worker.json"
        self._stopping = False

    def start(self) -> None:
        """Write the resolved config where the child can read it and start the child."""
        self.config_file.parent.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(json.dumps(self.cfg.model_dump(mode="json")), encoding="utf-8")
        self._stopping = False
        self._spawn()

    def _spawn(self) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen([sys.executable, "-m", "workers.cli", "--config", str(self.config_file), "--quiet"],
                                     env=env, preexec_fn=_die_with_parent)
        log.info("embedded worker started (pid %d)", self.proc.pid)

    def check(self) -> None:
        """Restart the child if it died; the caller requeues the jobs it was running."""
        if self._stopping or self.proc is None or self.proc.poll() is None:
            return
        log.warning("embedded worker exited with %s; restarting it", self.proc.returncode)
        if self.on_restart:
            self.on_restart()
        self._spawn()

    def stop(self, timeout_s: float = 15.0) -> None:
        """Warm shutdown (SIGTERM), then SIGKILL if the current slice takes too long."""
        self._stopping = True
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


# -- the service started with the node ---------------------------------------------------------
class PipelineService:
    """Routing hook + dispatcher + outbox sender (+ the embedded worker when there is no broker)."""

    def __init__(self, cfg: SRNodeConfig, factory: sessionmaker[Session], storage_dir: Path) -> None:
        self.cfg = cfg
        self.factory = factory
        self.dispatcher = Dispatcher(cfg, factory)
        self.sender = OutboxSender(cfg, factory, storage_dir)
        from workers.app import routed_models

        # A node without routing rules has nothing for a worker to do: no child process then.
        embedded = cfg.broker_url is None and cfg.worker.embedded and bool(routed_models(cfg))
        self.worker = EmbeddedWorker(cfg, on_restart=self._worker_died) if embedded else None
        self._stop = threading.Event()
        self._watch: threading.Thread | None = None
        self.on_demand: OnDemandJobs | None = None  # installed for query/retrieve by make_service

    def on_stable(self, series_pk: int) -> None:
        """The assembly hook: route the series, then wake the dispatcher."""
        if route_series(self.cfg, self.factory, series_pk):
            self.dispatcher.wake()

    def _worker_died(self) -> None:
        n = self.dispatcher.reset_all_active()
        if n:
            log.warning("%d job(s) of the dead embedded worker queued again", n)

    def _watch_worker(self) -> None:
        while not self._stop.wait(1.0):
            assert self.worker is not None
            self.worker.check()

    def start(self) -> None:
        """Start sender, dispatcher and (embedded mode) the worker child."""
        if self.worker is not None:
            # No other worker can have survived the node: whatever was active starts over.
            n = self.dispatcher.reset_all_active()
            if n:
                log.info("%d unfinished job(s) from before the restart queued again", n)
            self.worker.start()
            self._stop.clear()
            self._watch = threading.Thread(target=self._watch_worker, name="srnode-worker-watch", daemon=True)
            self._watch.start()
        self.sender.start()
        self.dispatcher.start()

    def stop(self) -> None:
        """Stop in reverse order; unfinished work stays in the job and outbox tables."""
        self._stop.set()
        if self._watch:
            self._watch.join(timeout=5)
        self.dispatcher.stop()
        self.sender.stop()
        if self.worker is not None:
            self.worker.stop()
        if self.on_demand is not None and on_demand_provider() is self.on_demand:
            set_on_demand_provider(None)


def make_service(node: "NodeServer") -> PipelineService:
    """Build the pipeline service for a node and register its stable-series hook."""
    service = PipelineService(node.cfg, node.session_factory, node.storage_dir)
    node.assembler.hooks.append(service.on_stable)
    service.on_demand = OnDemandJobs(node.cfg, node.session_factory, node.storage_dir, wake=service.dispatcher.wake)
    set_on_demand_provider(service.on_demand)
    return service
