"""Index tables: Patient → Study → Series → Instance, plus Job, Outbox and Audit.

Every hand-off between pipeline stages is a committed row with a state column (see
docs/architecture.md), so a crash between two stages loses nothing.
"""
from __future__ import annotations

import enum
from datetime import UTC, datetime, timedelta

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    false,
    func,
    select,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship

from dicom_node.clock import utcnow


class Base(DeclarativeBase):
    pass


UID = String(64)


class SeriesState(str, enum.Enum):
    receiving = "receiving"  # instances still arriving
    stable = "stable"  # quiet for stable_after_s; handed to routing
    routed = "routed"  # routing rules evaluated, jobs created


class JobState(str, enum.Enum):
    queued = "queued"
    running = "running"
    done = "done"
    # Finished, but some slices could not be read, decoded, upscaled or derived: job.error names them.
    # 16 characters, the column's length; the non-native enum has no CHECK constraint, so no migration.
    done_with_errors = "done_with_errors"
    failed = "failed"
    cancelled = "cancelled"


# Every state in which a job has finished producing its derived series (for "is it done?" questions).
FINISHED_STATES = (JobState.done, JobState.done_with_errors)


class OutboxState(str, enum.Enum):
    pending = "pending"
    delivered = "delivered"
    failed = "failed"  # gave up after send.max_attempts
    # Kept back by the noise guard until the job is released for sending (workers/noise_guard.py);
    # a non-native enum without a CHECK constraint: no migration needed for the value.
    held = "held"


class Patient(Base):
    __tablename__ = "patient"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # PatientID is not unique across issuers; (patient_id, issuer) is our identity key.
    patient_id: Mapped[str] = mapped_column(String(64), default="")
    issuer: Mapped[str] = mapped_column(String(64), default="")
    patient_name: Mapped[str] = mapped_column(String(324), default="")
    birth_date: Mapped[str] = mapped_column(String(8), default="")
    sex: Mapped[str] = mapped_column(String(16), default="")
    studies: Mapped[list[Study]] = relationship(back_populates="patient")
    __table_args__ = (UniqueConstraint("patient_id", "issuer", name="uq_patient_identity"),)


class Study(Base):
    __tablename__ = "study"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    patient_pk: Mapped[int] = mapped_column(ForeignKey("patient.id"), index=True)
    study_uid: Mapped[str] = mapped_column(UID, unique=True)
    study_date: Mapped[str] = mapped_column(String(8), default="", index=True)
    study_time: Mapped[str] = mapped_column(String(16), default="")
    accession_number: Mapped[str] = mapped_column(String(16), default="", index=True)
    study_id: Mapped[str] = mapped_column(String(16), default="")
    study_description: Mapped[str] = mapped_column(String(64), default="")
    referring_physician: Mapped[str] = mapped_column(String(324), default="")
    patient: Mapped[Patient] = relationship(back_populates="studies")
    series: Mapped[list[Series]] = relationship(back_populates="study")


class Series(Base):
    __tablename__ = "series"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_pk: Mapped[int] = mapped_column(ForeignKey("study.id"), index=True)
    series_uid: Mapped[str] = mapped_column(UID, unique=True)
    modality: Mapped[str] = mapped_column(String(16), default="", index=True)
    series_number: Mapped[int | None] = mapped_column(Integer, nullable=True)
    series_description: Mapped[str] = mapped_column(String(64), default="")
    body_part: Mapped[str] = mapped_column(String(64), default="")
    calling_ae: Mapped[str] = mapped_column(String(16), default="")
    state: Mapped[SeriesState] = mapped_column(
        Enum(SeriesState, native_enum=False, length=16), default=SeriesState.receiving, index=True
    )
    first_received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    stable_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # Completeness heuristics (series assembly); a flagged series is still processed.
    likely_incomplete: Mapped[bool] = mapped_column(Boolean, default=False)
    incomplete_reason: Mapped[str] = mapped_column(Text, default="")
    # Set on series srnode produced itself: the job id that made it (never routed again).
    # A plain integer, not a foreign key, to keep the series/job tables free of a cycle.
    derived_from_job: Mapped[int | None] = mapped_column(Integer, nullable=True, index=True)
    # Retention (dicom_node/retention): an admin's protect flag keeps the series from recycling.
    protected: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # Set (committed) before recycling deletes any row: a node that died mid-recycle finishes it on start.
    recycling_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True, index=True)
    # Recycled, row kept only as the parent of its job history (retention.keep_job_history).
    recycled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    study: Mapped[Study] = relationship(back_populates="series")
    instances: Mapped[list[Instance]] = relationship(back_populates="series")


class Instance(Base):
    __tablename__ = "instance"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    series_pk: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    sop_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    sop_class_uid: Mapped[str] = mapped_column(UID, default="")
    instance_number: Mapped[int | None] = mapped_column(Integer, nullable=True)
    transfer_syntax_uid: Mapped[str] = mapped_column(UID, default="")
    # Relative to node.storage_dir, built from validated UIDs only.
    file_path: Mapped[str] = mapped_column(Text)
    file_size: Mapped[int] = mapped_column(BigInteger, default=0)
    rows: Mapped[int | None] = mapped_column(Integer, nullable=True)
    columns: Mapped[int | None] = mapped_column(Integer, nullable=True)
    number_of_frames: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # Position along the slice normal (mm), for ordering and gap detection.
    slice_location: Mapped[float | None] = mapped_column(Float, nullable=True)
    image_position: Mapped[str] = mapped_column(String(128), default="")
    image_orientation: Mapped[str] = mapped_column(String(256), default="")
    pixel_spacing: Mapped[str] = mapped_column(String(64), default="")
    is_image: Mapped[bool] = mapped_column(Boolean, default=True)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    sender_ae: Mapped[str] = mapped_column(String(16), default="")
    series: Mapped[Series] = relationship(back_populates="instances")


class Job(Base):
    """One (series, routing rule) unit of SR work; idempotent by (series, rule, model, sha, scale)."""

    __tablename__ = "job"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    series_pk: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    rule_name: Mapped[str] = mapped_column(String(128), default="")
    model: Mapped[str] = mapped_column(String(128))
    checkpoint_sha256: Mapped[str] = mapped_column(String(64), default="")
    scale: Mapped[int] = mapped_column(Integer, default=4)
    priority: Mapped[str] = mapped_column(String(16), default="routine")
    destinations: Mapped[str] = mapped_column(Text, default="")  # comma-separated peer keys
    state: Mapped[JobState] = mapped_column(
        Enum(JobState, native_enum=False, length=16), default=JobState.queued, index=True
    )
    progress_done: Mapped[int] = mapped_column(Integer, default=0)
    progress_total: Mapped[int] = mapped_column(Integer, default=0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str] = mapped_column(Text, default="")
    task_id: Mapped[str] = mapped_column(String(64), default="")
    derived_series_uid: Mapped[str] = mapped_column(UID, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # Refreshed by the worker running the job; a stale one means that worker died (requeue).
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # When the broker message in task_id is due to be taken: its send, or the end of a retry
    # countdown. A job still queued a lease after that lost its message and is sent again.
    task_due_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # The worker (Celery name) whose attempt last failed with a retryable error: its retry prefers
    # another healthy worker (workers/health.py), so one broken worker cannot spend every attempt.
    last_failed_worker: Mapped[str] = mapped_column(String(255), default="")
    # Per-stage seconds as JSON text, e.g. {"load": .., "infer": .., "write": ..}.
    timings: Mapped[str] = mapped_column(Text, default="")
    # Noise guard (workers/noise_guard.py): medians over the derived CT slices of the flat-tissue
    # noise and strong-edge gradient against lanczos of the same slices (None: not measured);
    # `quality` holds the per-slice figures and the rule's limit as JSON; `held`: the derived
    # series is kept from its destinations (outbox rows `held`) until an admin releases it.
    noise_ratio: Mapped[float | None] = mapped_column(Float, nullable=True)
    edge_ratio: Mapped[float | None] = mapped_column(Float, nullable=True)
    quality: Mapped[str] = mapped_column(Text, default="", server_default="")
    held: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    __table_args__ = (
        UniqueConstraint("series_pk", "rule_name", "model", "checkpoint_sha256", "scale", name="uq_job_identity"),
    )

    def out_of_attempts(self, max_retries: int) -> bool:
        """True once the job has been claimed 1 + max_retries times: no further attempt is allowed."""
        return self.attempts > max_retries

    def fail(self, error: str) -> None:
        """Failed for good, with the reason a user needs (never empty)."""
        self.state = JobState.failed
        self.error = (error or "failed without a recorded reason")[:4000]
        self.finished_at = utcnow()


class Outbox(Base):
    """One instance to deliver to one destination; survives restarts until delivered."""

    __tablename__ = "outbox"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    instance_pk: Mapped[int] = mapped_column(ForeignKey("instance.id"), index=True)
    destination: Mapped[str] = mapped_column(String(64), index=True)  # peer key
    job_pk: Mapped[int | None] = mapped_column(ForeignKey("job.id"), nullable=True, index=True)
    state: Mapped[OutboxState] = mapped_column(
        Enum(OutboxState, native_enum=False, length=16), default=OutboxState.pending, index=True
    )
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    last_error: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # Handed to an association and not answered yet: after a crash or a broken association the
    # peer may have it although no response arrived (in doubt; see outbox.confirm).
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    __table_args__ = (UniqueConstraint("instance_pk", "destination", name="uq_outbox_item"),)


class Audit(Base):
    __tablename__ = "audit"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(128), default="")
    action: Mapped[str] = mapped_column(String(128))
    detail: Mapped[str] = mapped_column(Text, default="")


class ConfigOverride(Base):
    """An admin's change to one config section (peers, models, routing...), applied over the YAML.

    The newest row per section wins; older rows stay as history. See dicom_node/index/live_config.py.
    """

    __tablename__ = "config_override"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    section: Mapped[str] = mapped_column(String(64), index=True)
    value_json: Mapped[str] = mapped_column(Text)
    actor: Mapped[str] = mapped_column(String(128), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class NodeSetting(Base):
    """A value the node keeps about itself (e.g. `storage_id`, the UUID in its storage marker)."""

    __tablename__ = "node_setting"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text, default="")
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)


class WorkerState(str, enum.Enum):
    ok = "ok"  # its checks pass: it takes jobs
    refusing = "refusing"  # a check failed (`problem` says which): it takes no job
    stopped = "stopped"  # it exited normally


# A worker beats every few seconds (workers/health.py); one not seen for this long is gone.
WORKER_ALIVE_S = 30.0


class Worker(Base):
    """One `srnode worker` process (the embedded one too), upserted by its health thread."""

    __tablename__ = "worker"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)  # its Celery name, srnode-<device>-<pid>@<host>
    host: Mapped[str] = mapped_column(String(255), default="")
    pid: Mapped[int] = mapped_column(Integer, default=0)
    device: Mapped[str] = mapped_column(String(32), default="")
    models: Mapped[str] = mapped_column(Text, default="")  # comma-separated models it consumes
    state: Mapped[WorkerState] = mapped_column(
        Enum(WorkerState, native_enum=False, length=16), default=WorkerState.ok, index=True
    )
    problem: Mapped[str] = mapped_column(Text, default="")  # why it refuses jobs (empty when ok)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)

    def model_list(self) -> list[str]:
        return [m for m in self.models.split(",") if m]

    def alive(self, now: datetime, within_s: float = WORKER_ALIVE_S) -> bool:
        """Seen within `within_s` (SQLite gives back naive datetimes, stored as UTC)."""
        seen = self.last_seen_at if self.last_seen_at.tzinfo else self.last_seen_at.replace(tzinfo=UTC)
        return (now - seen).total_seconds() <= within_s

    def takes(self, model: str, now: datetime) -> bool:
        """Alive, healthy and consuming `model`'s queues: a job of `model` can go to it."""
        return self.state == WorkerState.ok and self.alive(now) and model in self.model_list()


def unserved_jobs(session: Session, now: datetime, waited_s: float = WORKER_ALIVE_S) -> str:
    """"" or why queued jobs wait: jobs due for over `waited_s` whose model no live, healthy worker
    consumes (none started, all gone, or all refusing: their problems are named)."""
    due = func.coalesce(Job.task_due_at, Job.created_at)
    waiting = dict(session.execute(select(Job.model, func.count()).where(
        Job.state == JobState.queued, due < now - timedelta(seconds=waited_s)).group_by(Job.model)).all())
    if not waiting:
        return ""
    workers = list(session.scalars(select(Worker)))
    unserved = {m: n for m, n in waiting.items() if not any(w.takes(m, now) for w in workers)}
    if not unserved:
        return ""
    refusing = [f"{w.name}: {w.problem}" for w in workers if w.state == WorkerState.refusing and w.alive(now)]
    jobs = ", ".join(f"{n} of {m}" for m, n in sorted(unserved.items()))
    return (f"queued jobs ({jobs}) waited over {waited_s:.0f} s and no healthy worker consumes their model"
            + (f"; refusing: {'; '.join(refusing)}" if refusing else "; no worker seen"))


Index("ix_series_state_last", Series.state, Series.last_received_at)
Index("ix_outbox_due", Outbox.state, Outbox.next_attempt_at)


# --- Reader study (issue 10): blinded ranking of SR candidates. See docs/reader_study.md. ---


class ReaderStudy(Base):
    """One blinded reader study: its definition (JSON), state and the secret behind opaque ids."""

    __tablename__ = "reader_study"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    definition_json: Mapped[str] = mapped_column(Text)
    # draft → computing → open → closed; failed when candidates could not be computed.
    state: Mapped[str] = mapped_column(String(16), default="draft", index=True)
    progress_done: Mapped[int] = mapped_column(Integer, default=0)
    progress_total: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str] = mapped_column(Text, default="")
    seed: Mapped[int] = mapped_column(BigInteger, default=0)
    # Keys the per-reader candidate ids; never leaves the server.
    secret: Mapped[str] = mapped_column(String(64))
    created_by: Mapped[str] = mapped_column(String(128), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    closed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class ReaderStudyCase(Base):
    """One case: a source slice (crop) at one scale setting; `k` orders the cases of a study."""

    __tablename__ = "reader_study_case"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("reader_study.id"), index=True)
    k: Mapped[int] = mapped_column(Integer)
    scale_key: Mapped[str] = mapped_column(String(16))  # "128to512" | "512to2048"
    instance_pk: Mapped[int] = mapped_column(ForeignKey("instance.id"))
    crop_json: Mapped[str] = mapped_column(String(128), default="")  # [y, x, h, w] of the source slice
    truth_path: Mapped[str] = mapped_column(Text, default="")  # float32 .npy, relative to storage_dir
    __table_args__ = (UniqueConstraint("study_id", "k", name="uq_reader_study_case_k"),)


class ReaderStudyCandidate(Base):
    """One model's output for one case, cached as a float32 .npy (modality values, e.g. HU)."""

    __tablename__ = "reader_study_candidate"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("reader_study_case.id"), index=True)
    model: Mapped[str] = mapped_column(String(128))
    checkpoint_sha256: Mapped[str] = mapped_column(String(64), default="")
    array_path: Mapped[str] = mapped_column(Text, default="")
    psnr_db: Mapped[float | None] = mapped_column(Float, nullable=True)
    ssim: Mapped[float | None] = mapped_column(Float, nullable=True)
    __table_args__ = (UniqueConstraint("case_id", "model", name="uq_reader_study_candidate"),)


class ReaderStudyPresentation(Base):
    """What one reader is shown for one case: its place in the reader's sequence and the display order."""

    __tablename__ = "reader_study_presentation"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("reader_study.id"), index=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("reader_study_case.id"))
    reader: Mapped[str] = mapped_column(String(64))  # token fingerprint
    position: Mapped[int] = mapped_column(Integer)  # 0-based place in this reader's sequence
    order_json: Mapped[str] = mapped_column(Text)  # candidate ids, left to right (A, B, C...)
    __table_args__ = (
        UniqueConstraint("case_id", "reader", name="uq_reader_study_presentation"),
        Index("ix_reader_study_presentation_seq", "study_id", "reader", "position"),
    )


class ReaderStudyAnswer(Base):
    """One submitted answer (audit: every submission is kept; the newest per case and reader counts)."""

    __tablename__ = "reader_study_answer"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("reader_study.id"), index=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("reader_study_case.id"), index=True)
    reader: Mapped[str] = mapped_column(String(64), index=True)
    ranking_json: Mapped[str] = mapped_column(Text)  # candidate ids, best first
    display_order_json: Mapped[str] = mapped_column(Text)  # candidate ids as shown, left to right
    answered_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    seconds_on_case: Mapped[float | None] = mapped_column(Float, nullable=True)
