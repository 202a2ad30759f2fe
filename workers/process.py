"""Run one job: source slices → model → derived objects stored, indexed and queued for sending.

Idempotent and resumable: derived UIDs are deterministic, so a slice whose derived instance is
already indexed is skipped, and rewriting one replaces the same file and row. A job is claimed
atomically; a second delivery of the same job finds it running with a fresh heartbeat and leaves.

Robust per slice: a slice that cannot be read, decoded, upscaled or derived is recorded (one log
line, its SOP Instance UID and the reason in job.error) and the others go on; the job ends
`done_with_errors` (or `failed` when no slice could be derived). See docs/pipeline.md.
"""
from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from itertools import chain
from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from sqlalchemy import case, func, or_, select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker
from tqdm import tqdm

from config.schema import SRNodeConfig
from dicom_node.clock import utcnow
from dicom_node.derive.writer import Derivation, derive_classic, derive_enhanced, encode
from dicom_node.index.db import session_scope
from dicom_node.index.models import FINISHED_STATES, Instance, Job, JobState, Outbox, OutboxState, Series
from dicom_node.ingest import StoreResult, store_datasets
from dicom_node.outbox.queue import enqueue
from dicom_node.storage import resolve_in
from sr_engine.intensity import modality_values
from sr_engine.memory import MIB, peak_rss_bytes, release_memory, rss_bytes
from workers.model_cache import get_model
from workers.noise_guard import NoiseGuard

log = logging.getLogger(__name__)


class PermanentJobError(Exception):
    """Retrying cannot help (bad source data, model mismatch): the job fails with this message."""


class TransientSliceError(Exception):
    """Some slices failed with errors another attempt may not hit; the job is retried for them."""


# Errors another attempt may not hit: the database was busy, a file system hiccup, the GPU ran out
# of memory for a moment. Per slice they make the job retry (only the slices not yet derived).
TRANSIENT_ERRORS: tuple[type[Exception], ...] = (
    TransientSliceError, OperationalError, OSError, TimeoutError, RuntimeError)

# Set when this worker process is asked to stop (SIGTERM: workers/cli.py). A running job stops
# after the chunk being written is committed and is released (queued again at once), instead of
# holding the worker until its last slice.
_STOP = threading.Event()


def request_stop() -> None:
    """Make every job of this process stop after its current chunk and release itself."""
    _STOP.set()


def stop_requested() -> bool:
    """True once request_stop() was called in this process."""
    return _STOP.is_set()


# Quoted text in a message about a slice's data may be a dataset value (a name, an ID).
_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")


def error_reason(exc: BaseException, mask_values: bool = False) -> str:
    """`Type: message` for logs and job.error; `mask_values` hides quoted text (slice data errors)."""
    message = _QUOTED.sub("<…>", str(exc)) if mask_values else str(exc)
    return f"{type(exc).__name__}: {message}"[:1000]


class SliceErrors:
    """The slices of one run that could not be read, decoded, upscaled or derived (thread-safe:
    the reader and the writer thread both record)."""

    MAX_LISTED = 20  # job.error stays readable for a series where every slice fails

    def __init__(self, job_id: int) -> None:
        self.job_id = job_id
        self._lock = threading.Lock()
        self._failed: dict[str, tuple[str, bool]] = {}  # SOP Instance UID -> (reason, transient)

    def record(self, sop_uid: str, exc: Exception) -> None:
        reason = error_reason(exc, mask_values=True)[:300]
        log.warning("job #%d: slice %s not derived: %s", self.job_id, sop_uid, reason)
        with self._lock:
            self._failed[sop_uid] = (reason, isinstance(exc, TRANSIENT_ERRORS))

    def __len__(self) -> int:
        return len(self._failed)

    @property
    def transient(self) -> bool:
        return any(t for _, t in self._failed.values())

    def summary(self, total: int) -> str:
        items = [f"{uid}: {reason}" for uid, (reason, _) in list(self._failed.items())[: self.MAX_LISTED]]
        more = len(self._failed) - len(items)
        return (f"{len(self._failed)} of {total} slice(s) not derived: " + "; ".join(items)
                + (f"; and {more} more" if more > 0 else ""))


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

    def __enter__(self) -> Heartbeat:
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
    """The series' intensity mapping; a percentile mapping is computed from up to 8 spread slices.

    A sample slice that cannot be read is left out here (the slice loop records it); only when
    none can be read does the last error end the job.
    """
    try:
        return model.mapping(modality, None)
    except ValueError:
        pick = np.unique(np.linspace(0, len(files) - 1, num=min(8, len(files))).round().astype(int))
        sample: list[np.ndarray] = []
        last: Exception | None = None
        for i in pick:
            try:
                sample.append(modality_values(dcmread(files[i])).ravel())
            except Exception as exc:  # noqa: BLE001 - a bad slice must not decide the series' mapping
                last = exc
        if not sample:
            assert last is not None
            raise last from None  # the slice's own error, not "this mapping needs values"
        # Concatenated, not stacked: a slice of another size must not break the sample.
        return model.mapping(modality, np.concatenate(sample))


def _set_progress(factory: sessionmaker[Session], job_id: int, done: int) -> JobState:
    with session_scope(factory) as session:
        job = session.get(Job, job_id)
        assert job is not None
        job.progress_done = done
        job.heartbeat_at = utcnow()
        return job.state


def run_job(cfg: SRNodeConfig, factory: sessionmaker[Session], job_id: int, device: str, task_id: str) -> str:
    """Process job `job_id` if it can be claimed; returns the job's final state ("done",
    "done_with_errors", "failed", "cancelled"), "released" (the worker is stopping: the job is
    queued again) or "skipped".

    Raises TransientSliceError when slices failed with transient errors and attempts are left
    (the caller retries the job: only the slices not yet derived are done again)."""
    if not claim_job(factory, job_id, task_id, cfg.worker.heartbeat_timeout_s):
        log.info("job #%d is not claimable (done, cancelled, or running elsewhere); skipping", job_id)
        return "skipped"
    with Heartbeat(factory, job_id, max(0.5, cfg.worker.heartbeat_timeout_s / 4)):
        try:
            return _run_claimed(cfg, factory, job_id, device)
        finally:
            _give_memory_back(job_id)


def _give_memory_back(job_id: int) -> None:
    """After a job: its slices are garbage now; hand the freed pages back to the OS.

    Without this a worker idles at its largest job's peak RSS (glibc keeps freed heap pages),
    which is memory the node, the sender and the other workers on the host cannot use.
    """
    peak = peak_rss_bytes()
    freed = release_memory()
    log.info("job #%d: memory given back %d MiB; RSS now %d MiB (process peak %d MiB)", job_id, freed // MIB,
             rss_bytes() // MIB, peak // MIB)


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
    attempts: int
    last_attempt: bool  # no retry follows this attempt: transient slice errors are final too


def _load_context(cfg: SRNodeConfig, factory: sessionmaker[Session], job_id: int) -> JobContext:
    with factory() as session:
        job = session.get(Job, job_id)
        assert job is not None
        series = session.get(Series, job.series_pk)
        assert series is not None
        queued_s = ((job.started_at or utcnow()) - job.created_at).total_seconds() if job.created_at else 0.0
        destinations = [d for d in job.destinations.split(",") if d]
        return JobContext(job_id, series.id, _sources(session, series.id), destinations, queued_s, job.model,
                          job.checkpoint_sha256, job.scale, series.modality, series.series_uid,
                          job.attempts, job.out_of_attempts(cfg.worker.max_retries))


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
    ctx = _load_context(cfg, factory, job_id)
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
    errors = SliceErrors(job_id)

    def fail(i: int, exc: Exception) -> None:
        errors.record(ctx.sources[i].sop_instance_uid, exc)

    guard = NoiseGuard.for_job(cfg, factory, job_id, ctx.modality, ctx.scale, mapping)
    writer = _ChunkWriter(cfg, factory, ctx, derivation, enhanced, derived=total - len(todo), fail=fail, guard=guard)
    bar = tqdm(total=total, initial=total - len(todo), desc=f"job #{job_id} {ctx.model}", unit="slice", leave=False,
               disable=None)  # no bar when stderr is not a terminal (services, tests)
    # One writer thread: chunk k is derived, written and committed while chunk k+1 is inferred.
    # "write" counts only the time the loop waits for it, i.e. what it adds to the job's wall time.
    cancelled = stopping = False
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"srnode-write-{job_id}") as pool:
        pending: Future[JobState] | None = None
        # The trailing None waits for the last chunk's write.
        # Chunks of the memory plan's batch for their slice size (at most worker.batch_size).
        for chunk in chain(_chunks(todo, files, lambda shape: model.upscaler.chunk_size(*shape), fail), [None]):
            if chunk is not None and stop_requested():
                chunk, stopping = None, True  # no new chunk; the one being written is committed
            batch: list[tuple[int, Dataset, np.ndarray]] = []
            if chunk is not None:
                with timings.measure("read"):
                    read = _read_chunk(chunk, files, fail)
                with timings.measure("infer"):
                    batch = _upscale_isolating(model, mapping, read, fail)
            if pending is not None:
                with timings.measure("write"):
                    cancelled = pending.result() == JobState.cancelled
                pending = None
                if cancelled:
                    break
            if batch:
                pending = pool.submit(writer.write, batch)
            if chunk is not None:
                bar.update(len(chunk))
            if stopping:
                break
    bar.close()
    if cancelled:
        log.info("job #%d cancelled after %d of %d slices", job_id, writer.derived, total)
        return "cancelled"
    if stopping:
        return release_job(factory, job_id, writer.derived, total)
    timings.stages["write_busy"] = writer.busy_s
    if enhanced and writer.classic:
        with timings.measure("write"):
            obj = derive_enhanced(writer.classic, ctx.source_series_uid, derivation)
            writer.store([obj])
    guard.finish(factory)  # series figures; held rows released unless a slice is over the limit
    return _finish(factory, ctx, timings, errors, writer.derived)


def _read_chunk(chunk: list[int], files: list[Path], fail: Callable[[int, Exception], None],
                ) -> list[tuple[int, Dataset, np.ndarray]]:
    """(index, dataset, modality values) of each slice of the chunk that can be read and decoded."""
    out = []
    for i in chunk:
        try:
            ds = dcmread(files[i])
            out.append((i, ds, modality_values(ds).astype(np.float32)))
        except Exception as exc:  # noqa: BLE001 - any slice may be corrupt; the others go on
            fail(i, exc)
    return out


def _upscale_isolating(model, mapping, read: list[tuple[int, Dataset, np.ndarray]],  # type: ignore[no-untyped-def]
                       fail: Callable[[int, Exception], None]) -> list[tuple[int, Dataset, np.ndarray]]:
    """Upscale the chunk as one batch; a batch fails as a whole, so on error retry it slice by
    slice to record only the slice(s) to blame."""
    if not read:
        return []
    try:
        upscaled = model.upscale(np.stack([v for _, _, v in read]), mapping)
        return [(i, ds, up) for (i, ds, _), up in zip(read, upscaled)]
    except Exception as exc:  # noqa: BLE001 - one slice must not sink its batch
        if len(read) == 1:
            fail(read[0][0], exc)
            return []
    return [out for one in read for out in _upscale_isolating(model, mapping, [one], fail)]


def _finish(factory: sessionmaker[Session], ctx: JobContext, timings: Timings, errors: SliceErrors,
            derived: int) -> str:
    if errors.transient and not ctx.last_attempt:
        # Another attempt may read these slices (a file system hiccup); the good ones are stored.
        raise TransientSliceError(errors.summary(len(ctx.sources)))
    state = JobState.done if not errors else JobState.done_with_errors if derived else JobState.failed
    error = ""
    if errors:
        gave_up = f"gave up after {ctx.attempts - 1} retries: " if errors.transient else ""
        error = gave_up + errors.summary(len(ctx.sources))
    with session_scope(factory) as session:
        job = session.get(Job, ctx.job_id)
        assert job is not None
        if job.state == JobState.cancelled:
            return "cancelled"
        if state is JobState.failed:
            job.fail(error)
        else:
            job.state, job.finished_at, job.error = state, utcnow(), error[:4000]
        job.timings = timings.to_json({**_json(job.timings), "queue": ctx.queued_s})
        if ctx.destinations and not session.scalar(select(func.count()).select_from(Outbox).where(
                Outbox.job_pk == ctx.job_id, Outbox.state == OutboxState.pending)):
            # Everything went out while the job ran: sending added nothing to its timeline.
            job.timings = json.dumps({**_json(job.timings), "send": 0.0})
    log.info("job #%d %s: %d of %d slices with %s x%d (%s)", ctx.job_id, state.value, derived, len(ctx.sources),
             ctx.model, ctx.scale, timings.to_json({}))
    return state.value


def _json(text: str) -> dict[str, float]:
    try:
        value = json.loads(text) if text else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _chunks(todo: list[int], files: list[Path], size: Callable[[tuple[int, int]], int],
            fail: Callable[[int, Exception], None]) -> Iterator[list[int]]:
    # Consecutive slices in batches of size(shape); the model stacks them, so a batch never mixes shapes.
    shapes: dict[int, tuple[int, int]] = {}
    batch: list[int] = []
    for i in todo:
        try:
            ds = dcmread(files[i], stop_before_pixels=True)
            shapes[i] = (int(ds.Rows), int(ds.Columns))
        except Exception as exc:  # noqa: BLE001 - a gone or unreadable file fails that slice only
            fail(i, exc)
            continue
        if batch and (len(batch) >= size(shapes[batch[0]]) or shapes[batch[0]] != shapes[i]):
            yield batch
            batch = []
        batch.append(i)
    if batch:
        yield batch


class _ChunkWriter:
    """Derive, store and index one chunk of upscaled slices, its outbox rows and the job's progress
    in one transaction (all or nothing, so a resumed job finds whole chunks). A slice that cannot
    be derived or encoded is recorded and left out; progress counts the slices derived."""

    def __init__(self, cfg: SRNodeConfig, factory: sessionmaker[Session], ctx: JobContext,
                 derivation: Derivation, enhanced: bool, derived: int,
                 fail: Callable[[int, Exception], None], guard: NoiseGuard) -> None:
        self.cfg, self.factory, self.ctx, self.derivation, self.enhanced = cfg, factory, ctx, derivation, enhanced
        self.derived = derived  # slices with a derived instance, as job.progress_done shows
        self.fail = fail
        self.classic: list[Dataset] = []  # enhanced output: the frames, combined at the end
        self.busy_s = 0.0
        self.guard = guard  # measured here, in the writer thread: it overlaps the next chunk's inference

    def _derive(self, i: int, ds: Dataset, up: np.ndarray) -> Dataset | None:
        try:
            derived = derive_classic(ds, np.asarray(up), self.derivation)
            self.guard.check(ds, up, derived)
            return derived if self.enhanced else encode(derived, self.derivation.transfer_syntax)
        except Exception as exc:  # noqa: BLE001 - odd geometry or attributes fail this slice only
            self.fail(i, exc)
            return None

    def write(self, batch: list[tuple[int, Dataset, np.ndarray]]) -> JobState:
        t0 = time.perf_counter()
        derived = [d for d in (self._derive(i, ds, up) for i, ds, up in batch) if d is not None]
        if self.enhanced:
            self.classic.extend(derived)
            self.derived += len(derived)
            state = _set_progress(self.factory, self.ctx.job_id, self.derived)
        elif derived:
            state = self.store(derived, len(derived))
        else:
            state = _set_progress(self.factory, self.ctx.job_id, self.derived)
        self.busy_s += time.perf_counter() - t0
        return state

    def store(self, datasets: list[Dataset], slices: int = 0) -> JobState:
        """Stored and indexed locally (for C-MOVE), one outbox row per destination, progress
        (`slices` more derived, counted once the transaction commits)."""
        done = self.derived + slices

        def queue_and_progress(session: Session, results: list[StoreResult]) -> JobState:
            if self.ctx.destinations:
                enqueue(session, [r.instance_pk for r in results], self.ctx.destinations, job_pk=self.ctx.job_id)
            job = session.get(Job, self.ctx.job_id)
            assert job is not None
            self.guard.on_commit(session, job)  # the figures so far; under `hold`, the new rows held
            job.progress_done = done
            job.heartbeat_at = utcnow()
            return job.state

        _, state = store_datasets(self.factory, Path(self.cfg.node.storage_dir), datasets,
                                  sender_ae=self.cfg.node.ae_title, derived_from_job=self.ctx.job_id,
                                  also=queue_and_progress)
        assert state is not None
        self.derived = done
        return state


def fail_job(factory: sessionmaker[Session], job_id: int, error: str) -> None:
    """Mark the job failed for good, with the reason a user needs."""
    with session_scope(factory) as session:
        job = session.get(Job, job_id)
        if job is not None and job.state not in (*FINISHED_STATES, JobState.cancelled):
            job.fail(error)


def release_job(factory: sessionmaker[Session], job_id: int, derived: int, total: int) -> str:
    """The worker is stopping: the running job back to queued without a task at once, so the
    node's dispatcher sends it to another worker now instead of after worker.heartbeat_timeout_s.
    A release is not a failed attempt: the claim's +1 is taken back. Returns "released"."""
    with session_scope(factory) as session:
        released = session.execute(
            update(Job).where(Job.id == job_id, Job.state == JobState.running)
            .values(state=JobState.queued, task_id="", heartbeat_at=None, task_due_at=None,
                    attempts=case((Job.attempts > 0, Job.attempts - 1), else_=0))).rowcount
    if released:
        log.warning("job #%d released at %d of %d slices: this worker is stopping; queued again", job_id,
                    derived, total)
    return "released"


def retry_delay_s(attempts: int) -> int:
    """Seconds before the retry after a transient error at attempt `attempts` (2^n, at most 300)."""
    return min(300, 2 ** attempts)


def retry_or_fail(factory: sessionmaker[Session], job_id: int, error: str, max_retries: int,
                  worker: str = "") -> int | None:
    """After a transient or unforeseen error: the running job back to queued for the task's retry
    (returns its attempts so far; the retry is due after retry_delay_s, recorded on the row so the
    dispatcher neither resends it before then nor leaves it waiting if the message is lost), or
    failed with the error once it is out of attempts (None). `worker` (this worker's name) is kept
    as job.last_failed_worker: the retry prefers another worker (workers/health.py)."""
    with session_scope(factory) as session:
        job = session.get(Job, job_id)
        if job is None or job.state != JobState.running:
            return None  # cancelled or finished meanwhile: nothing to retry
        if job.out_of_attempts(max_retries):
            job.fail(f"gave up after {job.attempts - 1} retries: {error}")
            return None
        job.state, job.error, job.heartbeat_at = JobState.queued, f"retrying: {error}"[:4000], None
        job.task_due_at = utcnow() + timedelta(seconds=retry_delay_s(job.attempts))
        job.last_failed_worker = worker[:255]
        return job.attempts
