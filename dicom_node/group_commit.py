"""Group commit: index writes from parallel associations share one transaction and one fsync.

Each C-STORE still waits until its own row is committed before it is acknowledged; what is shared
is the commit (the database's fsync), so N associations storing at once cost about one commit
per batch instead of N. A single association sees batches of one (no added latency).
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


class BatchFailed(Exception):
    """The shared transaction failed; the caller should redo its work in its own transaction."""


class GroupCommitter:
    """One writer thread per session factory; `run(fn)` executes fn(session) in a shared commit."""

    def __init__(self, factory: sessionmaker[Session], clean_errors: tuple[type[BaseException], ...] = ()) -> None:
        self.factory = factory
        # Exceptions an item may raise before writing anything: the batch goes on without it.
        self.clean_errors = clean_errors
        self._queue: queue.Queue[tuple[Callable[[Session], Any], Future[Any]]] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="srnode-group-commit", daemon=True)
        self._thread.start()

    def run(self, fn: Callable[[Session], T]) -> T:
        """Execute fn(session) in the next shared transaction; return once that is committed."""
        future: Future[Any] = Future()
        self._queue.put((fn, future))
        return future.result()

    def close(self) -> None:
        """Stop the writer thread once the queued work is done."""
        self._queue.put((None, None))  # type: ignore[arg-type]
        self._thread.join(30)

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

    def _run_batch(self, batch: list[tuple[Callable[[Session], Any], Future[Any]]]) -> None:
        outcomes: list[tuple[bool, Any]] = []
        session = self.factory()
        try:
            for fn, _ in batch:
                try:
                    outcomes.append((True, fn(session)))
                except self.clean_errors as exc:
                    outcomes.append((False, exc))
            session.commit()
        except BaseException as exc:  # noqa: BLE001 - every waiter redoes its own work
            session.rollback()
            for _, future in batch:
                future.set_exception(BatchFailed(f"{type(exc).__name__}: {exc}"))
            return
        finally:
            session.close()
        for (ok, value), (_, future) in zip(outcomes, batch):
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)


_committers: dict[int, GroupCommitter] = {}
_lock = threading.Lock()


def committer_for(factory: sessionmaker[Session], clean_errors: tuple[type[BaseException], ...] = ()) -> GroupCommitter:
    """The process's committer for `factory` (created on first use)."""
    with _lock:
        committer = _committers.get(id(factory))
        if committer is None or committer.factory is not factory:
            committer = _committers[id(factory)] = GroupCommitter(factory, clean_errors)
        return committer


def close_committer(factory: sessionmaker[Session]) -> None:
    """Stop and forget the committer of `factory` (NodeServer.stop)."""
    with _lock:
        committer = _committers.pop(id(factory), None)
    if committer is not None and committer.factory is factory:
        committer.close()
