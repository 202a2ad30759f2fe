"""Worker health: checks a worker passes before it takes work, its row in the `worker` table, and
when a task hands its job back to the queue instead of claiming it. See docs/pipeline.md, "Worker checks".

- **Storage**: the node writes `<storage_dir>/.srnode-storage-id` (a UUID, also in the index's
  `node_setting` table) at start; a worker that sees no marker, or another UUID, is not looking at
  the node's shared storage (not mounted, another node's copy). It must also be able to write there.
- **Database** and **broker** (Redis) reachable, **model files** whose sha256 matches the config.

A worker that fails a check refuses jobs: it consumes no queue until its checks pass at start, and
later a task it receives is handed back (published again, unclaimed) for another worker.

Light at import (no torch, no Celery). The storage marker the checks read is written by the node
(`dicom_node/storage_identity.py`).
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import delete, select, text, update
from sqlalchemy.orm import Session, sessionmaker

from config.schema import SRNodeConfig
from dicom_node.clock import utcnow
from dicom_node.index.db import session_scope
from dicom_node.index.models import Job, JobState, Worker, WorkerState
from dicom_node.storage_identity import storage_problem

log = logging.getLogger(__name__)

# How often a worker re-runs its checks and refreshes its row (Worker.alive allows 6 of these).
CHECK_EVERY_S = 5.0
# A task handed back waits this long first: the refusing worker is idle and would otherwise take
# the same message again at once, in a busy loop, while a good worker is still busy.
HAND_BACK_DELAY_S = 2.0
# After an attempt failed on a worker, its retry prefers another healthy worker for this long
# after the retry is due; then any worker takes it (another worker may be busy with a long job).
PREFER_OTHER_S = 60.0
# Rows of workers not seen for this long are deleted (restarts give new names: pid in the name).
FORGET_AFTER_S = 86400.0


def _aware(at: datetime | None) -> datetime | None:
    return at.replace(tzinfo=UTC) if at is not None and at.tzinfo is None else at


def database_problem(factory: sessionmaker[Session]) -> str:
    """"" when the index answers."""
    try:
        with factory() as session:
            session.execute(text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001 - any failure is the answer
        return f"database unreachable: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    return ""


def broker_problem(app: Any) -> str:
    """"" when the Celery app's broker accepts a connection (one try, 5 s at most)."""
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=0, timeout=5)
    except Exception as exc:  # noqa: BLE001 - any failure is the answer
        return f"broker unreachable: {type(exc).__name__}: {exc}"
    return ""


class ModelFiles:
    """Checks the served models' weight files against the configured sha256 (each file hashed
    again only when its size or mtime changes: a checkpoint can be gigabytes)."""

    def __init__(self) -> None:
        self._digests: dict[Path, tuple[int, int, str]] = {}

    def problem(self, cfg: SRNodeConfig, models: list[str]) -> str:
        problems = []
        for name in models:
            entry = cfg.models.get(name)
            if entry is None or entry.weights is None:
                continue  # a built-in (bicubic, lanczos): no file
            try:
                digest = self._sha256(Path(entry.weights))
            except OSError as exc:
                problems.append(f"model {name}: cannot read {entry.weights}: {exc.strerror or exc}")
                continue
            if entry.sha256 and digest != entry.sha256:
                problems.append(f"model {name}: {entry.weights} has sha256 {digest[:12]}…, "
                                f"the config says {entry.sha256[:12]}…")
        return "; ".join(problems)

    def _sha256(self, path: Path) -> str:
        from sr_engine.archs import file_sha256  # imports torch: only workers get here

        st = path.stat()
        cached = self._digests.get(path)
        if cached is not None and cached[:2] == (st.st_size, st.st_mtime_ns):
            return cached[2]
        digest = file_sha256(path)
        self._digests[path] = (st.st_size, st.st_mtime_ns, digest)
        return digest


@dataclass(frozen=True)
class WorkerIdentity:
    """What the `worker` table says about this process."""

    name: str  # the Celery worker name: srnode-<device>-<pid>@<host>
    host: str
    pid: int
    device: str
    models: list[str] = field(default_factory=list)


class WorkerHealth:
    """Runs the checks every CHECK_EVERY_S in a thread and keeps this worker's row up to date;
    `problem` is "" while the worker may take jobs."""

    def __init__(self, cfg: SRNodeConfig, factory: sessionmaker[Session], identity: WorkerIdentity,
                 broker: Callable[[], str] | None = None, every_s: float = CHECK_EVERY_S) -> None:
        self.cfg, self.factory, self.identity, self.every_s = cfg, factory, identity, every_s
        self.broker = broker  # None: no broker server to check (the embedded SQLite transport)
        self.problem = "not checked yet"
        self.started_at = utcnow()
        self._models = ModelFiles()
        self._checked = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._report_failed = False
        self._handed_back: set[int] = set()

    def check(self) -> str:
        """Run every check; log when the verdict changes; returns the problem ("" = healthy)."""
        checks: list[tuple[str, Callable[[], str]]] = [
            ("database", lambda: database_problem(self.factory)),
            ("storage", lambda: storage_problem(Path(self.cfg.node.storage_dir), self.factory)),
            ("models", lambda: self._models.problem(self.cfg, self.identity.models)),
        ]
        if self.broker is not None:
            checks.append(("broker", self.broker))
        problems = []
        for name, run in checks:
            try:
                found = run()
            except Exception as exc:  # noqa: BLE001 - a check that breaks is a failed check
                found = f"{type(exc).__name__}: {exc}"
            if found:
                problems.append(f"{name}: {found}" if not found.startswith(name) else found)
        problem = "; ".join(problems)[:2000]
        if problem != self.problem or not self._checked:
            if problem:
                log.warning("worker %s refuses jobs: %s", self.identity.name, problem)
            else:
                log.info("worker %s checks pass (%s): taking jobs", self.identity.name,
                         ", ".join(n for n, _ in checks))
        self.problem, self._checked = problem, True
        return problem

    def report(self) -> None:
        """Upsert this worker's row (state, problem, last_seen_at); forget long-gone workers."""
        now = utcnow()
        ident = self.identity
        try:
            with session_scope(self.factory) as session:
                row = session.scalar(select(Worker).where(Worker.name == ident.name))
                if row is None:
                    row = Worker(name=ident.name, started_at=self.started_at)
                    session.add(row)
                row.host, row.pid, row.device, row.models = ident.host, ident.pid, ident.device, ",".join(ident.models)
                row.state = WorkerState.refusing if self.problem else WorkerState.ok
                row.problem, row.last_seen_at = self.problem, now
                session.execute(delete(Worker).where(Worker.last_seen_at < now - timedelta(seconds=FORGET_AFTER_S)))
        except Exception as exc:  # noqa: BLE001 - the database check says why; log once per outage
            if not self._report_failed:
                log.warning("worker %s cannot update its row: %s: %s", ident.name, type(exc).__name__, exc)
            self._report_failed = True
            return
        self._report_failed = False

    def beat(self) -> None:
        self.check()
        self.report()

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self.beat()

    def start(self) -> None:
        """Check and report now, then every `every_s` in a thread."""
        self.beat()
        self._thread = threading.Thread(target=self._run, name="srnode-worker-health", daemon=True)
        self._thread.start()

    def wait_until_ok(self) -> None:
        """Block until the checks pass (the worker consumes no queue before)."""
        while self.problem:
            time.sleep(min(self.every_s, 1.0))

    def stop(self) -> None:
        """Stop the thread and mark the row `stopped`."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        try:
            with session_scope(self.factory) as session:
                session.execute(update(Worker).where(Worker.name == self.identity.name)
                                .values(state=WorkerState.stopped, last_seen_at=utcnow()))
        except Exception:  # noqa: BLE001 - the row goes stale on its own
            log.debug("could not mark worker %s stopped", self.identity.name, exc_info=True)

    def hand_back_reason(self, job_id: int) -> str:
        """Why this worker should not claim the job now ("" = claim it): its checks fail, or the
        job's last attempt failed here and another live, healthy worker consumes its model (for
        PREFER_OTHER_S after the retry is due)."""
        if self.problem:
            return f"this worker refuses jobs: {self.problem}"
        now = utcnow()
        with self.factory() as session:
            job = session.get(Job, job_id)
            if job is None or job.state != JobState.queued or job.last_failed_worker != self.identity.name:
                return ""
            due = _aware(job.task_due_at)
            if due is None or (now - due).total_seconds() > PREFER_OTHER_S:
                return ""
            others = [w.name for w in session.scalars(select(Worker).where(Worker.name != self.identity.name))
                      if w.takes(job.model, now)]
        return f"its last attempt failed on this worker and {others[0]} can take it" if others else ""

    def first_hand_back(self, job_id: int) -> bool:
        """True the first time job `job_id` is handed back by this process (one log line per job)."""
        first = job_id not in self._handed_back
        self._handed_back.add(job_id)
        return first
