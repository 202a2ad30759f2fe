"""Run one job: source slices → model → derived objects stored, indexed and queued for sending.

Idempotent and resumable: derived UIDs are deterministic, so a slice whose derived instance is
already indexed is skipped, and rewriting one replaces the same file and row. A job is claimed
atomically; a second delivery of the same job finds it running with a fresh heartbeat and leaves.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from itertools import chain
from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session, sessionmaker
from tqdm import tqdm

from config.schema import SRNodeConfig
from dicom_node.derive.writer import Derivation, derive_classic, derive_enhanced, encode
from dicom_node.index.db import session_scope
from dicom_node.index.models import Instance, Job, JobState, Outbox, OutboxState, Series
from dicom_node.ingest import StoreResult, store_datasets
from dicom_node.outbox.queue import enqueue
from dicom_node.storage import resolve_in
from sr_engine.intensity import modality_values
from workers.model_cache import get_model

log = logging.getLogger(__name__)


class PermanentJobError(Exception):
    """Retrying cannot help (bad source data, model mismatch): the job fails with this message."""


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class Timings:
    """Seconds per stage, summed over slices; stored on the job row as JSON."""

    stages: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def measure(self, stage: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.stages[stage] = self.stages.get(stage, 0.0) + time.perf_counter() - t0

    def to_json(self, extra: dict[str, float]) -> str:
        # A resumed job's stages replace the earlier attempt's; arrival stages are kept.
        return json.dumps({k: round(float(v), 4) for k, v in {**extra, **self.stages}.items()})


def claim_job(factory: sessionmaker[Session], job_id: int, task_id: str, heartbeat_timeout_s: float) -> bool:
    """Atomically take the job: queued, or running under a worker whose heartbeat went stale."""
    stale = utcnow() - timedelta(seconds=heartbeat_timeout_s)
    with session_scope(factory) as session:
        result = session.execute(
            update(Job)
            .where(Job.id == job_id)
            .where(or_(Job.state == JobState.queued,
                       (Job.state == JobState.running) & (or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < stale))))
            .values(state=JobState.running, task_id=task_id[:64], attempts=Job.attempts + 1,
                    started_at=utcnow(), heartbeat_at=utcnow(), error="")
        )
        return bool(result.rowcount)


class Heartbeat:
    """Refresh job.heartbeat_at from a thread while the job runs (a slice can take minutes)."""

    def __init__(self, factory: sessionmaker[Session], job_id: int, every_s: float) -> None:
        self.factory, self.job_id, self.every_s = factory, job_id, every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"srnode-heartbeat-{job_id}", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                with session_scope(self.factory) as session:
                    session.execute(update(Job).where(Job.id == self.job_id, Job.state == JobState.running)
                                    .values(heartbeat_at=utcnow()))
            except Exception:  # noqa: BLE001 - a missed beat is only a missed beat
                log.debug("heartbeat for job #%d failed", self.job_id, exc_info=True)

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def _sources(session: Session, series_pk: int) -> list[Instance]:
    rows = list(session.scalars(select(Instance).where(Instance.series_pk == series_pk, Instance.is_image.is_(True))))
    # Spatial order (then instance number) so progress and the enhanced object follow the stack.
    return sorted(rows, key=lambda i: (i.slice_location is None, i.slice_location or 0.0, i.instance_number or 0, i.id))


def _already_derived(session: Session, storage_dir: Path, sop_uid: str) -> bool:
    inst = session.scalar(select(Instance).where(Instance.sop_instance_uid == sop_uid))
    return inst is not None and resolve_in(storage_dir, inst.file_path).exists()


def _mapping(model, modality: str, files: list[Path]):  # type: ignore[no-untyped-def]
    """The series' intensity mapping; a percentile mapping is computed from up to 8 spread slices."""
    try:
        return model.mapping(modality, None)
    except ValueError:
        pick = np.unique(np.linspace(0, len(files) - 1, num=min(8, len(files))).round().astype(int))
        sample = np.stack([modality_values(dcmread(files[i])).ravel() for i in pick])
        return model.mapping(modality, sample)


def _set_progress(factory: sessionmaker[Session], job_id: int, done: int) -> JobState:
    with session_scope(factory) as session:
        job = session.get(Job, job_id)
        assert job is not None
        job.progress_done = done
        job.heartbeat_at = utcnow()
        return job.state


def run_job(cfg: SRNodeConfig, factory: sessionmaker[Session], job_id: int, device: str, task_id: str) -> str:
    """Process job `job_id` if it can be claimed; returns "done", "skipped" or "cancelled"."""
    if not claim_job(factory, job_id, task_id, cfg.worker.heartbeat_timeout_s):
        log.info("job #%d is not claimable (done, cancelled, or running elsewhere); skipping", job_id)
        return "skipped"
    with Heartbeat(factory, job_id, max(0.5, cfg.worker.heartbeat_timeout_s / 4)):
        return _run_claimed(cfg, factory, job_id, device)


@dataclass(frozen=True)
class JobContext:
    """What a claimed job needs from the index, read once at its start."""

    job_id: int
    series_pk: int
    sources: list[Instance]
    destinations: list[str]
    queued_s: float
    model: str
    checkpoint_sha256: str
    scale: int
    modality: str
    source_series_uid: str


def _load_context(factory: sessionmaker[Session], job_id: int) -> JobContext:
    with factory() as session:
        job = session.get(Job, job_id)
        assert job is not None
        series = session.get(Series, job.series_pk)
        assert series is not None
        queued_s = ((job.started_at or utcnow()) - job.created_at).total_seconds() if job.created_at else 0.0
        return JobContext(job_id, series.id, _sources(session, series.id), [d for d in job.destinations.split(",") if d],
                          queued_s, job.model, job.checkpoint_sha256, job.scale, series.modality, series.series_uid)


def _checked_model(cfg: SRNodeConfig, ctx: JobContext, device: str):  # type: ignore[no-untyped-def]
    if not ctx.sources:
        raise PermanentJobError(f"series #{ctx.series_pk} has no image instances")
    if any((s.number_of_frames or 1) > 1 for s in ctx.sources):
        raise PermanentJobError("multi-frame source instances are not supported; send single-frame slices")
    model = get_model(cfg, ctx.model, device)
    if model.checkpoint_sha256 != ctx.checkpoint_sha256:
        raise PermanentJobError(
            f"model {ctx.model!r} now has checkpoint sha256 {model.checkpoint_sha256[:12]}…, the job was "
            f"routed for {ctx.checkpoint_sha256[:12]}…; re-route the series to use the new weights"
        )
    if model.scale != ctx.scale:
        raise PermanentJobError(f"model {ctx.model!r} is x{model.scale}, the job asks for x{ctx.scale}")
    return model


def _run_claimed(cfg: SRNodeConfig, factory: sessionmaker[Session], job_id: int, device: str) -> str:
    storage_dir = Path(cfg.node.storage_dir)
    timings = Timings()
    ctx = _load_context(factory, job_id)
    with timings.measure("load_model"):
        model = _checked_model(cfg, ctx, device)
    derivation = Derivation.from_config(cfg, ctx.model, ctx.checkpoint_sha256, ctx.scale)
    enhanced = cfg.output.encoding == "enhanced"
    files = [resolve_in(storage_dir, s.file_path) for s in ctx.sources]
    with factory() as session:
        # Resume: slices whose derived instance is already stored are not derived again.
        todo = [i for i, s in enumerate(ctx.sources)
                if enhanced or not _already_derived(session, storage_dir, derivation.sop_uid(s.sop_instance_uid))]
    total = len(ctx.sources)
    with session_scope(factory) as session:
        job = session.get(Job, job_id)
        assert job is not None
        job.progress_total, job.progress_done = total, total - len(todo)
        job.derived_series_uid = derivation.series_uid(ctx.source_series_uid)
    mapping = _mapping(model, ctx.modality, files)
    writer = _ChunkWriter(cfg, factory, ctx, derivation, enhanced)
    done = total - len(todo)
    bar = tqdm(total=total, initial=done, desc=f"job #{job_id} {ctx.model}", unit="slice", leave=False,
               disable=None)  # no bar when stderr is not a terminal (services, tests)
    # One writer thread: chunk k is derived, written and committed while chunk k+1 is inferred.
    # "write" counts only the time the loop waits for it, i.e. what it adds to the job's wall time.
    cancelled = False
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"srnode-write-{job_id}") as pool:
        pending: Future[JobState] | None = None
        # The trailing None waits for the last chunk's write.
        for chunk in chain(_chunks(todo, files, cfg.worker.batch_size), [None]):
            if chunk is not None:
                with timings.measure("read"):
                    datasets = [dcmread(files[i]) for i in chunk]
                    values = np.stack([modality_values(ds) for ds in datasets]).astype(np.float32)
                with timings.measure("infer"):
                    upscaled = model.upscale(values, mapping)
            if pending is not None:
                with timings.measure("write"):
                    cancelled = pending.result() == JobState.cancelled
                if cancelled:
                    break
            if chunk is not None:
                done += len(chunk)
                pending = pool.submit(writer.write, datasets, upscaled, done)
                bar.update(len(chunk))
    bar.close()
    if cancelled:
        log.info("job #%d cancelled after %d of %d slices", job_id, done, total)
        return "cancelled"
    timings.stages["write_busy"] = writer.busy_s
    if enhanced:
        with timings.measure("write"):
            obj = derive_enhanced(writer.classic, ctx.source_series_uid, derivation)
            writer.store([obj], len(ctx.sources))
    return _finish(factory, ctx, timings)


def _finish(factory: sessionmaker[Session], ctx: JobContext, timings: Timings) -> str:
    with session_scope(factory) as session:
        job = session.get(Job, ctx.job_id)
        assert job is not None
        if job.state == JobState.cancelled:
            return "cancelled"
        job.state = JobState.done
        job.finished_at = utcnow()
        job.error = ""
        job.timings = timings.to_json({**_json(job.timings), "queue": ctx.queued_s})
        if ctx.destinations and not session.scalar(select(func.count()).select_from(Outbox).where(
                Outbox.job_pk == ctx.job_id, Outbox.state == OutboxState.pending)):
            # Everything went out while the job ran: sending added nothing to its timeline.
            job.timings = json.dumps({**_json(job.timings), "send": 0.0})
    log.info("job #%d done: %d slices with %s x%d (%s)", ctx.job_id, len(ctx.sources), ctx.model, ctx.scale,
             timings.to_json({}))
    return "done"


def _json(text: str) -> dict[str, float]:
    try:
        value = json.loads(text) if text else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _chunks(todo: list[int], files: list[Path], size: int) -> Iterator[list[int]]:
    # Consecutive slices in batches; the model stacks them, so a batch never mixes shapes.
    shapes: dict[int, tuple[int, int]] = {}
    batch: list[int] = []
    for i in todo:
        ds = dcmread(files[i], stop_before_pixels=True)
        shapes[i] = (int(ds.Rows), int(ds.Columns))
        if batch and (len(batch) >= size or shapes[batch[0]] != shapes[i]):
            yield batch
            batch = []
        batch.append(i)
    if batch:
        yield batch


class _ChunkWriter:
    """Derive, store and index one chunk of upscaled slices, its outbox rows and the job's progress
    in one transaction (all or nothing, so a resumed job finds whole chunks)."""

    def __init__(self, cfg: SRNodeConfig, factory: sessionmaker[Session], ctx: JobContext,
                 derivation: Derivation, enhanced: bool) -> None:
        self.cfg, self.factory, self.ctx, self.derivation, self.enhanced = cfg, factory, ctx, derivation, enhanced
        self.classic: list[Dataset] = []  # enhanced output: the frames, combined at the end
        self.busy_s = 0.0

    def write(self, datasets: list[Dataset], upscaled: np.ndarray, done: int) -> JobState:
        t0 = time.perf_counter()
        derived = [derive_classic(ds, np.asarray(up), self.derivation) for ds, up in zip(datasets, upscaled)]
        if self.enhanced:
            self.classic.extend(derived)
            state = _set_progress(self.factory, self.ctx.job_id, done)
        else:
            state = self.store([encode(d, self.derivation.transfer_syntax) for d in derived], done)
        self.busy_s += time.perf_counter() - t0
        return state

    def store(self, datasets: list[Dataset], done: int) -> JobState:
        """Stored and indexed locally (for C-MOVE), one outbox row per destination, progress."""
        def queue_and_progress(session: Session, results: list[StoreResult]) -> JobState:
            if self.ctx.destinations:
                enqueue(session, [r.instance_pk for r in results], self.ctx.destinations, job_pk=self.ctx.job_id)
            job = session.get(Job, self.ctx.job_id)
            assert job is not None
            job.progress_done = done
            job.heartbeat_at = utcnow()
            return job.state

        _, state = store_datasets(self.factory, Path(self.cfg.node.storage_dir), datasets,
                                  sender_ae=self.cfg.node.ae_title, derived_from_job=self.ctx.job_id,
                                  also=queue_and_progress)
        assert state is not None
        return state


def fail_job(factory: sessionmaker[Session], job_id: int, error: str) -> None:
    """Mark the job failed for good, with the reason a user needs."""
    with session_scope(factory) as session:
        job = session.get(Job, job_id)
        if job is not None and job.state not in (JobState.done, JobState.cancelled):
            job.state = JobState.failed
            job.error = error[:4000]
            job.finished_at = utcnow()


def requeue_job(factory: sessionmaker[Session], job_id: int, error: str) -> None:
    """Put a job back to queued after a transient error (the task retries it)."""
    with session_scope(factory) as session:
        job = session.get(Job, job_id)
        if job is not None and job.state == JobState.running:
            job.state = JobState.queued
            job.error = error[:4000]
            job.heartbeat_at = None
