"""Group commit: index writes from parallel associations share one transaction and one fsync.

Each C-STORE still waits until its own row is committed before it is acknowledged; what is shared
is the commit (the database's fsync), so N associations storing at once cost about one commit
per batch instead of N. A single association sees batches of one (no added latency).

The committer is the node's: NodeServer creates one for its session factory, hands it to the
receive path in NodeContext.committer (C-STORE, and STOW-RS through the admin app) and closes it
on stop. A caller of dicom_node.ingest without one gets `commit_alone`: a batch of one, at once.
"""
from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

from sqlalchemy.orm import Session, sessionmaker

T = TypeVar("T")
MAX_BATCH = 64
# One queued call: fn(session), the exceptions it may raise cleanly, the caller's future.
_Item = tuple[Callable[[Session], Any], tuple[type[BaseException], ...], Future[Any]]


class BatchFailed(Exception):
    """The shared transaction failed; the caller should redo its work in its own transaction."""


class GroupCommitter:
    """One writer thread per session factory; `run(fn)` executes fn(session) in a shared commit.

    The thread starts with the first `run` (a node that never receives starts none) and again
    after `close`."""

    def __init__(self, factory: sessionmaker[Session]) -> None:
        self.factory = factory
        self._queue: queue.Queue[_Item] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def run(self, fn: Callable[[Session], T], clean_errors: tuple[type[BaseException], ...] = ()) -> T:
        """Execute fn(session) in the next shared transaction; return once that is committed.

        `clean_errors`: exceptions fn may raise before writing anything; the batch goes on without
        it, and this call raises it.
        """
        future: Future[Any] = Future()
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="srnode-group-commit", daemon=True)
                self._thread.start()
            self._queue.put((fn, clean_errors, future))
        return future.result()

    def close(self) -> None:
        """Stop the writer thread once the queued work is done."""
        with self._lock:
            thread, self._thread = self._thread, None
            if thread is None:
                return
            self._queue.put((None, (), None))  # type: ignore[arg-type]
        thread.join(30)

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first[0] is None:
                return
            batch = [first]
            while len(batch) < MAX_BATCH:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item[0] is None:
                    self._queue.put(item)  # stop after this batch
                    break
                batch.append(item)
            self._run_batch(batch)

    def _run_batch(self, batch: list[_Item]) -> None:
        outcomes: list[tuple[bool, Any]] = []
        session = self.factory()
        try:
            for fn, clean_errors, _ in batch:
                try:
                    outcomes.append((True, fn(session)))
                except clean_errors as exc:
                    outcomes.append((False, exc))
            session.commit()
        except BaseException as exc:  # noqa: BLE001 - every waiter redoes its own work
            session.rollback()
            for _, _, future in batch:
                future.set_exception(BatchFailed(f"{type(exc).__name__}: {exc}"))
            return
        finally:
            session.close()
        for (ok, value), (_, _, future) in zip(outcomes, batch):
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)


def commit_alone(factory: sessionmaker[Session], fn: Callable[[Session], T],
                 clean_errors: tuple[type[BaseException], ...] = ()) -> T:
    """`GroupCommitter.run` without a committer: fn(session) in a transaction of its own, in this
    thread, with run's outcomes for a batch of one (a clean error raised, any other BatchFailed)."""
    session = factory()
    try:
        try:
            result = fn(session)
        except clean_errors:
            session.rollback()
            raise
        session.commit()
        return result
    except clean_errors:
        raise
    except BaseException as exc:  # noqa: BLE001 - the caller redoes its work alone, as after a failed batch
        session.rollback()
        raise BatchFailed(f"{type(exc).__name__}: {exc}") from exc
    finally:
        session.close()
